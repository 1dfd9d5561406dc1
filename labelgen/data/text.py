"""Reading a user's text files (tags, class lists, annotation JSON): one place that turns every way a
file can fail to read into a one-line `DataError` naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

from labelgen.errors import DataError


def read_user_text(path: Path, what: str, fix: str) -> str:
    """The text of `path` as UTF-8; a leading byte-order mark (Excel's "CSV UTF-8") is dropped.

    `what` names the file's role ("tags file"), `fix` says what to do when it is missing.
    Raises `DataError` for a missing, unreadable, non-file or non-UTF-8 path."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise DataError(f"{what} {path} not found; {fix}") from e
    except IsADirectoryError as e:
        raise DataError(f"{what} {path} is a folder, not a file; {fix}") from e
    except PermissionError as e:
        raise DataError(f"{what} {path} cannot be read (permission denied); check its permissions") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    except OSError as e:
        raise DataError(f"{what} {path} cannot be read ({e.strerror or e}); check the file") from e
