"""What a data set is, as a short digest for the index's cache key: a data set edited in place (a
fixed tags row, an added image, a replaced mask, an edited COCO JSON) gets a new index key, so no
stage trains on a stale manifest.

Text files the index reads whole (tags, class lists, split lists, annotation JSON: `.csv`, `.json`,
`.jsonl`, `.txt`) count by content; every other file (images, masks, XML) by its path, size and
modification time, which is what changes when a file is replaced or edited, without reading it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CONTENT_SUFFIXES = (".csv", ".json", ".jsonl", ".txt")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(root: Path) -> dict[str, object]:
    """{"files": count, "digest": sha256 hex} of every file under `root` (symlinks followed).
    Raises OSError for an unreadable root."""
    h = hashlib.sha256()
    count = 0
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            try:
                stat = path.stat()
            except FileNotFoundError:  # a dangling symlink: the index will name it
                continue
            h.update(str(path.relative_to(root)).encode())
            if path.suffix.lower() in CONTENT_SUFFIXES:
                with open(path, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 20), b""):
                        h.update(block)
            else:
                h.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            count += 1
    return {"files": count, "digest": h.hexdigest()[:16]}
