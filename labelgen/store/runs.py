"""Run folders: the record of the last `labelgen run` in a folder, and which folder was used last.

`<run>/recipe.json` holds the resolved recipe, the target and every planned stage's key, so that
`labelgen status` can tell done / partial / failed / stale / missing from files alone, without
importing torch or a stage. The last run folder used is remembered per user (XDG state directory),
so `labelgen status` and `labelgen export` find it without `--run-dir`.
"""

from __future__ import annotations

import os
from pathlib import Path

from labelgen.errors import ArtifactError

RUN_RECORD = "recipe.json"


def _state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "labelgen" / "last_run"


def remember_last_run(run_dir: Path) -> None:
    """Record `run_dir` as the last run folder used; never fails a run (a read-only home is fine)."""
    try:
        path = _state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(Path(run_dir).resolve()) + "\n")
    except OSError:
        pass


def last_run_dir() -> Path:
    """The run folder of the last `labelgen run` by this user; `ArtifactError` if there is none."""
    try:
        return Path(_state_file().read_text().strip())
    except (OSError, ValueError) as e:
        raise ArtifactError("no run folder given and no `labelgen run` recorded yet; pass --run-dir PATH") from e
