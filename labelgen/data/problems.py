"""The entries of problems.json: what each `action` means, and how `data check` and the index log
print them."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

# What labelgen did about an entry (its `action`).
LEFT_OUT = "left out"  # the image (or row) is not in the manifest
ANNOTATION_SKIPPED = "annotation skipped"  # a COCO annotation that cannot belong to any image's GT
PARTS_SKIPPED = "kept; broken annotation parts skipped"
NOT_SCORED = "kept; GT not scored"  # the image trains on its tags; its GT mask is not used
CONVERTED = "converted when read"
ORIENTED = "EXIF orientation applied"
NOT_ORIENTED = "EXIF orientation not applied"
NOT_INDEXED = "not indexed (split not used)"
CATEGORY_NOT_A_CLASS = "category not made a class"  # a COCO root category (Roboflow's id 0)
FILE_NOT_READ = "file not read"  # a file a person put among the data that no image uses
LABEL_NOT_A_CLASS = "label not a class"  # a name in a data set's labelmap.txt that no class has

# actions that record a decision about a usable image or an unused row: a note, not a problem
NOTE_ACTIONS = (CONVERTED, ORIENTED, NOT_ORIENTED, NOT_INDEXED, CATEGORY_NOT_A_CLASS, LABEL_NOT_A_CLASS)


def problem(file: Path | str, reason: str, action: str = LEFT_OUT, where: str | None = None) -> dict[str, str]:
    """One entry of problems.json: the file, why, what labelgen did, and (for rows of a tags file)
    the `<tags file>:<line>` that listed it."""
    entry = {"file": str(file), "reason": reason, "action": action}
    if where:
        entry["where"] = where
    return entry


def is_problem(entry: dict[str, str]) -> bool:
    """Whether an entry is a problem (an image or row left out, GT not scored, annotations skipped)
    rather than a note on a decision."""
    return entry["action"] not in NOTE_ACTIONS


# an absolute path inside a reason: up to whitespace or the punctuation that ends one in our messages
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s:;,'\"()\[\]]+")


def _relative_to(anchor: str) -> Callable[[re.Match[str]], str]:
    """A path of the line shown from the folder it shares with the line's `anchor`, its first path
    (the data set's folders are said once, not again for each image, mask or label map named)."""
    folder = os.path.dirname(anchor)

    def shorten(match: re.Match[str]) -> str:
        path = match.group(0)
        if not anchor.startswith("/"):
            return path
        if path == anchor:  # the line's own file, said again in its reason
            return os.path.basename(path)
        common = os.path.commonpath([folder, path])
        return path if common in ("/", "") else os.path.relpath(path, common)

    return shorten


def describe(entry: dict[str, str]) -> str:
    """One line: `<tags file>:<line> <file>: <reason> [<action>]`. The line's first path is shown
    whole; the others (the image after its tags-file row, masks, label maps in the reason) relative
    to the folder they share with it, so a line stays short however deep the data set lies. A row
    of the file itself (a list's line) names the file once, with its line."""
    file, where = entry["file"], entry.get("where")
    anchor = where.rsplit(":", 1)[0] if where else file
    shorten = _relative_to(anchor)
    if not where:
        head = file
    elif anchor == file:
        head = where
    else:
        head = f"{where} {_ABSOLUTE_PATH.sub(shorten, file)}"
    return f"{head}: {_ABSOLUTE_PATH.sub(shorten, entry['reason'])} [{entry['action']}]"


def summary(usable: int, entries: list[dict[str, str]]) -> str:
    """`N usable images; k left out, ...` with a count per action."""
    counts = Counter(e["action"] for e in entries)
    parts = [f"{n} {action}" for action, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return f"{usable} usable images" + ("; " + ", ".join(parts) if parts else "; no problems")


def kind(entry: dict[str, str]) -> str:
    """What sort of problem an entry is, without its particulars: the reason up to its first
    separator, with paths and numbers blanked ("image is N×N but the JSON's width×height is N×N")."""
    reason = re.sub(r"^annotation \S+ \([^)]*\): ", "annotation: ", entry["reason"])
    head = re.split(r";| \(", reason, maxsplit=1)[0]
    head = re.sub(r"\S*/\S*", "<file>", head)
    head = re.sub(r"\d+(\.\d+)?", "N", head)
    return f"{head.strip()} [{entry['action']}]"


def grouped(entries: list[dict[str, str]]) -> list[tuple[str, int, dict[str, str]]]:
    """(kind, count, first entry) per kind, most frequent first: one log line per kind of problem."""
    counts: Counter[str] = Counter()
    first: dict[str, dict[str, str]] = {}
    for e in entries:
        k = kind(e)
        counts[k] += 1
        first.setdefault(k, e)
    return [(k, n, first[k]) for k, n in counts.most_common()]
