"""A real Label Studio server, through its HTTP API (`requests`; the SDK's dependencies clash with
labelgen's): a project per review queue, images uploaded through the import API (so no shared
folder or local-file serving is needed), the current masks as predictions (pre-annotations a person
edits), and the people's annotations read back through the project's JSON export.

API calls (Label Studio 1.x, `Authorization: Token <token>`): `GET/POST /api/projects`,
`POST /api/projects/{id}/import?return_task_ids=true` (multipart: one image, one task),
`POST /api/predictions`, `GET /api/projects/{id}/export?exportType=JSON`, `GET /api/users/`.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from labelgen.errors import DataError, LabelgenError
from labelgen.report.pictures import class_colours

log = logging.getLogger(__name__)

FROM_NAME, TO_NAME = "mask", "image"  # the labeling config's BrushLabels and Image names
TIMEOUT_S = 120  # seconds per request: an export of a large project takes a while


class LabelStudioError(LabelgenError):
    """The server refused a request or cannot be reached."""


def labeling_config(classes: tuple[str, ...]) -> str:
    """The project's labeling config: the image, and one brush label per foreground class in the
    report's class colours."""
    colours = class_colours()
    labels = "".join(
        f'<Label value="{html.escape(name, quote=True)}" background="rgb({r},{g},{b})"/>'
        for name, (r, g, b) in ((classes[k], colours[k]) for k in range(1, len(classes)))
    )
    return (
        f'<View><Image name="{TO_NAME}" value="$image" zoom="true"/>'
        f'<BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">{labels}</BrushLabels></View>'
    )


@dataclass(frozen=True)
class LabelStudio:
    url: str  # e.g. http://127.0.0.1:8080
    token: str  # the user's API token (Account & Settings; legacy token)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = self.url.rstrip("/") + path
        try:
            r = requests.request(
                method, url, headers={"Authorization": f"Token {self.token}"}, timeout=TIMEOUT_S, **kwargs
            )
        except requests.RequestException as e:
            raise LabelStudioError(f"Label Studio at {self.url} cannot be reached ({e}); check --url") from e
        if r.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the token ({r.status_code}): pass the API token of "
                "Account & Settings with --token (legacy tokens must be enabled for the organization)"
            )
        if not r.ok:
            raise LabelStudioError(f"Label Studio {method} {path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def find_project(self, title: str) -> int | None:
        """The id of the project called `title`, if any (the first, where several are)."""
        page = 1
        while True:
            data = self._call("GET", "/api/projects", params={"page": page, "page_size": 100})
            projects = data["results"] if isinstance(data, dict) else data
            for p in projects:
                if p["title"] == title:
                    return int(p["id"])
            if not isinstance(data, dict) or not data.get("next"):
                return None
            page += 1

    def create_project(self, title: str, label_config: str, model_version: str) -> int:
        project = self._call(
            "POST",
            "/api/projects",
            json={
                "title": title,
                "label_config": label_config,
                "show_collab_predictions": True,  # the masks sent appear as pre-annotations
                "model_version": model_version,
                "description": "Masks from labelgen, worst first: correct them and submit.",
            },
        )
        return int(project["id"])

    def add_task(self, project: int, image: Path) -> int:
        """Upload one image file as one task; its task id."""
        with image.open("rb") as f:
            data = self._call(
                "POST",
                f"/api/projects/{project}/import",
                params={"return_task_ids": "true"},
                files={"file": (image.name, f)},
            )
        return int(data["task_ids"][0])

    def add_prediction(self, task: int, result: list[dict[str, Any]], model_version: str, score: float) -> None:
        self._call(
            "POST",
            "/api/predictions",
            json={"task": task, "result": result, "model_version": model_version, "score": score},
        )

    def export(self, project: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations, in Label Studio's JSON export format."""
        return self._call(
            "GET", f"/api/projects/{project}/export", params={"exportType": "JSON", "download_all_tasks": "true"}
        )

    def user_emails(self) -> dict[int, str]:
        """{user id: e-mail}; empty where the token may not list users."""
        try:
            data = self._call("GET", "/api/users/")
        except LabelStudioError:
            return {}
        users = data["results"] if isinstance(data, dict) else data
        return {int(u["id"]): u.get("email") or u.get("username") or str(u["id"]) for u in users}

    def task_link(self, project: int, task: int) -> str:
        return f"{self.url.rstrip('/')}/projects/{project}/data?task={task}"


def read_mapping(path: Path) -> dict[str, Any]:
    """A push record: {"project", "url", "tasks": {task id: image id}}."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: unreadable push record ({e}); push again") from e
