"""Reading a user's text files (tags, class lists, annotation JSON): one place that turns every way a
file can fail to read into a one-line `DataError` naming the file and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from labelgen.errors import DataError


def read_user_text(path: Path, what: str, fix: str) -> str:
    """The text of `path` as UTF-8; a leading byte-order mark (Excel's "CSV UTF-8") is dropped.

    `what` names the file's role ("tags file"), `fix` says what to do when it is missing.
    Raises `DataError` for a missing, unreadable, non-file or non-UTF-8 path."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise _read_error(e, path, what, fix) from e


def open_user_text(path: Path, what: str, fix: str) -> TextIO:
    """`path` opened for reading as UTF-8 text (leading byte-order mark dropped), for files too large
    to read whole; read it with `read_user_chunk`. Raises `DataError` as `read_user_text` does."""
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(path))
        return open(path, encoding="utf-8-sig")
    except OSError as e:
        raise _read_error(e, path, what, fix) from e


def read_user_chunk(file: TextIO, path: Path, what: str, fix: str, size: int = 8 << 20) -> str:
    """Up to `size` characters of a file from `open_user_text` ('' at its end); `DataError` on failure."""
    try:
        return file.read(size)
    except (OSError, UnicodeDecodeError) as e:
        raise _read_error(e, path, what, fix) from e


def _read_error(e: OSError | UnicodeDecodeError, path: Path, what: str, fix: str) -> DataError:
    if isinstance(e, UnicodeDecodeError):
        return DataError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8")
    if isinstance(e, FileNotFoundError):
        return DataError(f"{what} {path} not found; {fix}")
    if isinstance(e, IsADirectoryError):
        return DataError(f"{what} {path} is a folder, not a file; {fix}")
    if isinstance(e, PermissionError):
        return DataError(f"{what} {path} cannot be read (permission denied); check its permissions")
    return DataError(f"{what} {path} cannot be read ({e.strerror or e}); check the file")
