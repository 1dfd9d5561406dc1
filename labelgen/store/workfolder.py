"""A folder outside a run that units of work write into (a mask export, a `labelgen data index`
folder), with the same guarantees as a stage's artifact: one completion record per unit, the last
failure and a lock, all under `<folder>/.labelgen/`.

    <folder>/.labelgen/lock                 held (flock) by the process writing the folder
    <folder>/.labelgen/_FAILED.json         the unit that failed last and its error line
    <folder>/.labelgen/<key>/_shards/N.json each finished unit's record (checksums of its files)
    <folder>/.labelgen/<key>/...            the units' own scratch files (an export's COCO parts)

`key` names what is being written (the source, the format, the settings): records of another key
vouch for other content, so they are removed when a folder is written with a new key.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelgen.store.artifact import SHARDS, UnitRecords

HIDDEN = ".labelgen"


def work_key(identity: dict[str, Any]) -> str:
    """Short hash of what a work folder holds (JSON-able: paths as strings, settings)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class WorkFolder(UnitRecords):
    folder: Path
    key: str
    kind: str  # what writes it, for messages: "export", "index"

    @property
    def path(self) -> Path:
        return self.folder

    @property
    def scratch(self) -> Path:
        """This key's own folder under `.labelgen/`, for files the units write besides the outputs."""
        return self.folder / HIDDEN / self.key

    @property
    def records_dir(self) -> Path:
        return self.scratch / SHARDS

    @property
    def failure_path(self) -> Path:
        return self.folder / HIDDEN / "_FAILED.json"

    @property
    def lock_path(self) -> Path:
        return self.folder / HIDDEN / "lock"

    def describe(self) -> str:
        return f"{self.kind} folder {self.folder}"

    def lock_advice(self) -> str:
        return f"wait for that {self.kind} to finish (or stop it), or write into another folder"

    def forget_other_keys(self) -> None:
        """Remove the records (and scratch files) of other keys: this write replaces their files.
        Call with the lock held."""
        hidden = self.folder / HIDDEN
        for entry in hidden.iterdir() if hidden.is_dir() else ():
            if entry.is_dir() and entry.name != self.key:
                shutil.rmtree(entry)
        self.scratch.mkdir(parents=True, exist_ok=True)
