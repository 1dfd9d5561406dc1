"""evaluate's reports on real runs with all, none and some GT: the numbers without GT, the GT counts,
and report.html's gallery (worst first, every tagged class's heat map), opened in a real Chromium."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelgen.data.demo import generate_demo
from labelgen.data.images import read_image
from labelgen.data.manifest import Manifest
from labelgen.data.masks import read_mask, write_mask
from labelgen.models.cam_inference import load_cam_model
from labelgen.numerics.metrics import confusion_matrix, image_miou, scores, tag_agreement
from labelgen.pipeline.runner import run_pipeline
from labelgen.store.sharded import ImageArrays
from tests.conftest import tiny_recipe

PARTIAL_KEPT = ["train_00000", "train_00001", "train_00002", "train_00003", "train_00004", "val_00000", "val_00001"]
CONTRADICTING = "train_00005"  # its mask holds none of its tags: the index keeps the image, not the GT
PAGED = ("evaluate.gallery_page=8", "evaluate.gallery_inline=8")


def _folder_run(tmp_path_factory, client, name: str, keep: list[str] | None, *overrides: str) -> Path:
    """The tiny demo as a `folder` data set whose masks/ holds only `keep` (None: every mask)."""
    base = tmp_path_factory.mktemp(name)
    root = base / "data"
    generate_demo(root, tiny_recipe()["dataset"])
    for mask in (root / "masks").glob("*.png"):
        if keep is not None and mask.stem not in keep:
            mask.unlink()
    if keep is not None and CONTRADICTING in keep:
        write_mask(root / "masks" / f"{CONTRADICTING}.png", np.zeros((96, 96), np.uint8))
    # the demo's tags file names a val split; a folder set indexes one only where it is named
    recipe = tiny_recipe('dataset.name="folder"', f'dataset.root="{root}"', 'dataset.val_split="val"', *overrides)
    run_pipeline(recipe, base / "run", "full", client)
    return base / "run"


@pytest.fixture(scope="module")
def no_gt_run(tmp_path_factory, client) -> Path:
    return _folder_run(tmp_path_factory, client, "nogt", [])


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory, client) -> Path:
    return _folder_run(tmp_path_factory, client, "partial", [*PARTIAL_KEPT, CONTRADICTING], *PAGED)


def _one(run: Path, pattern: str) -> Path:
    found = list(run.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def _metrics(run: Path) -> dict:
    return json.loads(_one(run, "evaluate/*/metrics.json").read_text())


def _manifest(run: Path) -> Manifest:
    return Manifest.load(_one(run, "index/*/manifest.json"))


def _masks(run: Path, pattern: str) -> dict[str, np.ndarray]:
    arrays = ImageArrays(_one(run, pattern))
    return {i: arrays.mask(n) for n, i in enumerate(arrays.ids)}


def gallery_rows(report_dir: Path) -> list[dict]:
    """Every gallery row in page order: report.html's <template> pages, then report_gallery/*.js."""
    page = (report_dir / "report.html").read_text()
    fragments = "".join(re.findall(r'<template id="page-\d+">(.*?)</template>', page, re.S))
    for script in sorted((report_dir / "report_gallery").glob("page-*.js")):
        body = script.read_text()
        fragments += "".join(json.loads(body[body.index("[") : body.rindex("]") + 1]))
    rows = []
    for chunk in fragments.split('<div class="row" ')[1:]:
        attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', chunk.split(">", 1)[0]))
        rows.append(
            {
                **attrs,
                "rank": float(attrs["rank"]),
                "score": float(attrs["score"]),
                "cams": re.findall(r'<figure class="cam" data-class="([^"]+)"', chunk),
                "cam_captions": re.findall(r"<figcaption>(CAM [^<]+)</figcaption>", chunk),
                "masks": re.findall(r'<figure class="(?:mask|nogt)" data-source="([^"]+)"', chunk),
                "html": chunk,
            }
        )
    return rows


def expected_confidence(run: Path, manifest: Manifest) -> dict[str, list[float]]:
    """The CAM network's sigmoid coarse-head scores for each train image's tags, computed here directly."""
    net = load_cam_model(_one(run, "train_cam/*/model.pt"), torch.device("cpu"))
    size = tiny_recipe()["train_cam"].input_size
    out = {}
    with torch.no_grad():
        for r in manifest.split("train"):
            square = np.array(Image.fromarray(read_image(r.image)).resize((size, size), Image.BICUBIC))
            logits = net(torch.from_numpy(square).permute(2, 0, 1)[None]).coarse_logits[0]
            out[r.id] = [float(torch.sigmoid(logits[t - 1])) for t in r.tags]
    return out


# ------------------------------------------------------------------ with GT for every image (tiny demo)
def test_gt_free_numbers_equal_direct_counts(tiny_full_run):
    run, manifest = tiny_full_run, _manifest(tiny_full_run)
    metrics, train = _metrics(run), manifest.split("train")
    pseudo, pred = _masks(run, "pseudo_labels/*/masks.zarr"), _masks(run, "predict/*/masks_train.zarr")
    free = metrics["gt_free"]["train"]
    tagged = np.zeros(manifest.num_labels, int)
    found = {"pseudo_labels": np.zeros_like(tagged), "predict_train": np.zeros_like(tagged)}
    cm = np.zeros((manifest.num_labels,) * 2, np.int64)
    for r in train:
        tagged[list(r.tags)] += 1
        for name, masks in (("pseudo_labels", pseudo), ("predict_train", pred)):
            found[name][list(r.tags)] += [bool((masks[r.id] == t).any()) for t in r.tags]
        cm += confusion_matrix(pseudo[r.id], pred[r.id], manifest.num_labels)
    assert free["images"] == 24 and free["tagged"] == tagged.tolist()
    for name in found:
        assert free["sources"][name]["found"] == found[name].tolist()
    assert free["agreement"]["miou"] == pytest.approx(scores(cm)["miou"])
    assert free["agreement"]["between"] == ["pseudo_labels", "predict_train"]
    confidence = expected_confidence(run, manifest)
    for c in range(1, manifest.num_labels):
        values = [v for r in train for t, v in zip(r.tags, confidence[r.id], strict=True) if t == c]
        assert free["confidence"][c] == pytest.approx(np.mean(values), abs=1e-5)
    assert metrics["gt"] == {
        "images": {"train": 24, "val": 8},
        "scored": {"train": 24, "val": 8},
        "not_scored_by_index": 0,
        "not_scored": [],
        "corrected": {"train": 0, "val": 0},  # images scored against a person's correction (none here)
    }


def test_gallery_is_sorted_worst_first_by_gt_miou(tiny_full_run):
    run, manifest = tiny_full_run, _manifest(tiny_full_run)
    rows = gallery_rows(_one(run, "evaluate/*/report.html").parent)
    assert len(rows) == 32 and len({r["id"] for r in rows}) == 32
    ranks = [r["rank"] for r in rows]
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
    by_id = {r.id: r for r in manifest.records}
    preds = {**_masks(run, "predict/*/masks_train.zarr"), **_masks(run, "predict/*/masks_val.zarr")}
    for row in rows:  # the rank of an image with GT is its prediction's mIoU against GT
        r = by_id[row["id"]]
        iou = image_miou(confusion_matrix(read_mask(r.mask), preds[r.id], manifest.num_labels))
        assert row["rank"] == pytest.approx(iou, abs=1e-6) and row["gt"] == "1"


def test_every_row_shows_each_tagged_class_heat_map_and_the_masks(tiny_full_run):
    run, manifest = tiny_full_run, _manifest(tiny_full_run)
    rows = {r["id"]: r for r in gallery_rows(_one(run, "evaluate/*/report.html").parent)}
    confidence = expected_confidence(run, manifest)
    for r in manifest.records:
        row = rows[r.id]
        assert row["tags"].split(";") == [manifest.classes[t] for t in r.tags]
        if r.split == "train":
            assert row["cams"] == [manifest.classes[t] for t in r.tags]
            for caption, value in zip(row["cam_captions"], confidence[r.id], strict=True):
                assert caption.endswith(f"{value:.2f}")
            assert row["masks"] == ["pseudo_labels", "predict_train_unrestricted", "predict_train", "gt"]
        else:
            assert row["cams"] == [] and row["masks"] == ["predict_val", "gt"]
        assert row["html"].count("<img ") == 1 + len(row["cams"]) + len(row["masks"])


def test_report_md_and_csv_say_what_was_measured(tiny_full_run):
    out = _one(tiny_full_run, "evaluate/*/report.md").parent
    report = (out / "report.md").read_text()
    assert "Scored against GT: 32 of 32 images (train 24 of 24, val 8 of 8)." in report
    assert "## Without ground truth" in report and "agreement mIoU" in report and "(report.html)" in report
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert sorted(int(r["rank"]) for r in rows) == list(range(1, 33))
    worst = min(rows, key=lambda r: int(r["rank"]))
    assert float(worst["gt_iou"]) == pytest.approx(min(float(r["gt_iou"]) for r in rows), abs=1e-4)
    assert (out / "overlays.png").is_file() and (out / "per_class_iou.png").is_file()


# ------------------------------------------------------------------ no GT at all
def test_without_gt_the_report_ranks_by_agreement(no_gt_run):
    run, manifest = no_gt_run, _manifest(no_gt_run)
    metrics = _metrics(run)
    assert metrics["gt"]["scored"] == {"train": 0, "val": 0} and metrics["pseudo_labels"]["images"] == 0
    out = _one(run, "evaluate/*/report.html").parent
    # standard JSON (JavaScript and jq read it): a score that cannot be computed is null, never NaN
    text = (out / "metrics.json").read_text()
    assert metrics["pseudo_labels"]["miou"] is None and "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))
    assert not (out / "per_class_iou.png").exists() and (out / "per_class_gt_free.png").is_file()
    assert "No image of this run has a GT mask" in (out / "report.md").read_text()
    rows = gallery_rows(out)
    assert len(rows) == 32 and [r["rank"] for r in rows] == sorted(r["rank"] for r in rows)
    pseudo, pred = _masks(run, "pseudo_labels/*/masks.zarr"), _masks(run, "predict/*/masks_val.zarr")
    pred.update(_masks(run, "predict/*/masks_train.zarr"))
    by_id = {r.id: r for r in manifest.records}
    for row in rows:
        r = by_id[row["id"]]
        if r.split == "train":  # the GT-free score: pseudo-label / prediction agreement
            expected = tag_agreement(confusion_matrix(pseudo[r.id], pred[r.id], manifest.num_labels), r.tags)
        else:  # no pseudo-label to agree with: the share of its tags the prediction holds
            expected = np.mean([(pred[r.id] == t).any() for t in r.tags])
        assert row["gt"] == "0" and row["rank"] == row["score"] == pytest.approx(expected, abs=1e-6)
        assert "gt" not in row["masks"]


# ------------------------------------------------------------------ GT for some images
def test_partial_gt_scores_what_exists_and_names_what_the_index_refused(partial_run):
    metrics = _metrics(partial_run)
    assert metrics["gt"]["scored"] == {"train": 5, "val": 2}
    assert metrics["pseudo_labels"]["images"] == 5 and metrics["predict_val"]["images"] == 2
    assert metrics["gt"]["not_scored_by_index"] == 1
    assert metrics["gt"]["not_scored"][0]["file"].endswith(f"{CONTRADICTING}.png")
    assert "no pixel of tagged" in metrics["gt"]["not_scored"][0]["reason"]
    out = _one(partial_run, "evaluate/*/report.html").parent
    report = (out / "report.md").read_text()
    assert "Scored against GT: 7 of 32 images (train 5 of 24, val 2 of 8)." in report
    assert "The index kept 1 image(s) without scoring their GT mask" in report
    rows = {r["id"]: r for r in gallery_rows(out)}
    assert sorted(i for i, r in rows.items() if r["gt"] == "1") == sorted(PARTIAL_KEPT)
    assert "GT not scored: GT mask has no pixel of tagged" in rows[CONTRADICTING]["html"]
    assert all(r["rank"] == r["score"] for r in rows.values() if r["gt"] == "0")


def test_large_galleries_page_out_of_report_html(partial_run):
    out = _one(partial_run, "evaluate/*/report.html").parent
    page = (out / "report.html").read_text()
    assert page.count("<template id=") == 1  # gallery_inline=8 images: page 1 only
    assert sorted(p.name for p in (out / "report_gallery").iterdir()) == [f"page-000{n}.js" for n in (2, 3, 4)]
    ranks = [r["rank"] for r in gallery_rows(out)]
    assert len(ranks) == 32 and ranks == sorted(ranks)


# ------------------------------------------------------------------ in a real browser
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2000",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("CI must test report.html in Chromium: install it (`apt-get install -y chromium`, as .ci/run does)")
    pytest.skip("chromium is not installed (apt-get install -y chromium); report.html not opened in a browser")


def _browse(chromium: str, tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [ln for ln in done.stderr.splitlines() if ":CONSOLE(" in ln]
    assert not console, console  # the page logs nothing: any console line is an error or a warning
    return done


def _shown_rows(dom: str) -> str:
    """The gallery rows the page shows: inside <div id="rows">, up to the pager after it (the dump
    also holds every <template>'s content)."""
    start = dom.index('<div id="rows">')
    return dom[start : dom.index("<nav>", start)]


def _page_state(dom: str) -> dict[str, str]:
    html_tag = re.search(r"<html[^>]*>", dom).group(0)
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', html_tag))


@pytest.mark.parametrize("run_name", ["tiny_full_run", "no_gt_run", "partial_run"])
def test_report_html_renders_its_gallery_in_chromium(run_name, request, chromium, tmp_path):
    run = request.getfixturevalue(run_name)
    report = _one(run, "evaluate/*/report.html")
    rows = gallery_rows(report.parent)
    dom = _browse(chromium, tmp_path, report.as_uri(), "--dump-dom").stdout
    state = _page_state(dom)
    assert state.get("ready") == "1" and "errors" not in state, state
    shown = _shown_rows(dom)
    first_page = rows[: 8 if run_name == "partial_run" else 50]
    assert shown.count('<div class="row"') == len(first_page)
    assert shown.count("<img ") == sum(r["html"].count("<img ") for r in first_page)
    top = int(state["gallery-top"])
    assert top < 1600  # the gallery starts in the first screen
    shot = tmp_path / "report.png"
    _browse(chromium, tmp_path, report.as_uri(), f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    gallery = pixels[top + 150 :].reshape(-1, 3)  # below the gallery's title and legend: thumbnails
    assert len(np.unique(gallery, axis=0)) > 2000  # photos and heat maps, not a blank page


def test_external_gallery_pages_load_in_chromium(partial_run, chromium, tmp_path):
    report = _one(partial_run, "evaluate/*/report.html")
    dom = _browse(chromium, tmp_path, report.as_uri() + "#page=3", "--dump-dom").stdout
    state = _page_state(dom)
    assert state.get("ready") == "1" and state.get("page") == "3" and "errors" not in state, state
    expected = [r["id"] for r in gallery_rows(report.parent)[16:24]]
    assert re.findall(r'<div class="row" data-id="([^"]+)"', _shown_rows(dom)) == expected
