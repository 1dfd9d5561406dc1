"""Issue 14: a user's own set with untagged negatives trains, exports and evaluates."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelgen.data.demo import generate_demo
from labelgen.pipeline.indexing import load_manifest
from labelgen.pipeline.runner import run_pipeline
from labelgen.pipeline.status import run_status
from labelgen.store.sharded import ImageArrays
from tests.conftest import TINY_RECIPE, tiny_recipe
from tests.realdata import coco_json, coco_photo, write_coco_root

NEGATIVES = 8


def test_untagged_negatives_train_export_and_evaluate(tmp_path, client):
    """The tiny demo's shapes as positives, plus real photos without any shape as untagged rows."""
    recipe = tiny_recipe()
    root = tmp_path / "data"
    generate_demo(root, recipe["dataset"])
    rows = (root / "tags.csv").read_text().splitlines()
    rows = [r for r in rows if not r.endswith(",val")]  # one split
    for n, image_id in enumerate((9, 25, 30, 34, 36, 42, 49, 61)[:NEGATIVES]):
        Image.open(coco_photo(image_id)).convert("RGB").resize((96, 96)).save(root / "images" / f"neg{n}.png")
        rows.append(f"images/neg{n}.png,,train")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    overrides = ['dataset.name="folder"', f'dataset.root="{root}"', 'dataset.val_split=""', 'dataset.untagged="keep"']
    arts = run_pipeline(tiny_recipe(*overrides), tmp_path / "run", "pseudo_labels", client)
    manifest = load_manifest(arts["index"])
    negatives = {r.id for r in manifest.records if not r.tags}
    assert negatives == {f"neg{n}" for n in range(NEGATIVES)}
    # they reached the classifier's loss: every epoch's batches held untagged images
    log = [json.loads(line) for line in (arts["train_cam"].path / "log.jsonl").read_text().splitlines()]
    assert all(0 < e["negatives"] <= NEGATIVES for e in log) and sum(e["negatives"] for e in log) >= NEGATIVES
    # no CAM was made for them, and their pseudo-labels are all background
    cams = ImageArrays(arts["export_cams"].path / "cams.zarr")
    masks = ImageArrays(arts["pseudo_labels"].path / "masks.zarr")
    for i, image_id in enumerate(masks.ids):
        maps, labels = cams.cam(i)
        if image_id in negatives:
            assert maps.shape[0] == 0 and labels.size == 0
            assert (masks.mask(i) == 0).all()
        else:
            assert maps.shape[0] > 0
    metrics = json.loads((arts["evaluate"].path / "metrics.json").read_text())
    assert metrics["pseudo_labels"]["images"] == sum(r.mask is not None for r in manifest.records) == 24
    assert np.isfinite(metrics["pseudo_labels"]["miou"])


def _single_class_folder(root: Path) -> Path:
    """Real photos tagged `person` where COCO has one (74, 9 is untagged: a negative)."""
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("person\n")
    rows = ["image,tags"]
    for image_id, tags in ((74, "person"), (9, ""), (472, "")):
        (root / "images" / f"{image_id}.jpg").symlink_to(coco_photo(image_id))
        rows.append(f"images/{image_id}.jpg,{tags}")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_clip_start_that_clamps_from_the_first_step_is_refused_before_work(tmp_path, monkeypatch):
    """On a single-class set (2 labels) an untrained decoder's loss is ln 2 = 0.69, under the
    reference clip_start 1.2: refused before anything is written, with the value to use."""
    from click.testing import CliRunner

    from labelgen.cli import main

    root = _single_class_folder(tmp_path / "data")
    run = tmp_path / "run"
    args = ["run", "full", "--dataset", "folder", "--recipe", str(TINY_RECIPE), "--data-root", str(root)]
    args += ["--run-dir", str(run), "--set", 'dataset.name="folder"', "--set", 'dataset.untagged="keep"']
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train_decoder.clip_start=1.2 is not below 0.69" in errors[0]
    assert "ln 2" in errors[0] and "that share here: 0.27" in errors[0] and "gradient_clipping=false" in errors[0]
    assert not run.exists() or not any(run.iterdir())
    # with a second wrong thing, a run and its dry run both name both, one line each
    missing = tmp_path / "no-such-weights.safetensors"
    two = [*args, "--set", f'train_cam.weights="{missing}"']
    for result in (CliRunner().invoke(main, two), CliRunner().invoke(main, [*two, "--dry-run"])):
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(lines) == 2, result.output
        assert str(missing) in lines[0] and "clip_start=1.2 is not below 0.69" in lines[1]
    assert not run.exists() or not any(run.iterdir())
    # one line for one cause: a missing data root, or a weights folder two stages need
    result = CliRunner().invoke(main, [str(tmp_path / "nope") if a == str(root) else a for a in args])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "is not a folder" in lines[0], result.output
    monkeypatch.setenv("LABELGEN_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    result = CliRunner().invoke(main, [*args, "--set", "train_decoder.clip_start=0.27"])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "no-weights is not a folder" in lines[0], result.output
    monkeypatch.undo()
    for fix in ("train_decoder.clip_start=0.27", "train_decoder.gradient_clipping=false"):
        result = CliRunner().invoke(main, [*args, "--set", fix, "--dry-run"])
        assert result.exit_code == 0 and "error:" not in result.output, result.output
        assert "demo_image_size" not in result.output  # the tiny recipe's demo size: a folder set never reads it


def test_a_coco_export_with_one_category_is_refused_once_the_index_has_read_it(tmp_path, client):
    """COCO's categories are in its JSON: the same check runs right after the index (kept, so the
    fixed run resumes from it), before any CAM stage."""
    from labelgen.errors import ConfigError

    data = coco_json()
    person = [c for c in data["categories"] if c["name"] == "person"]
    data = {**data, "categories": person, "annotations": [a for a in data["annotations"] if a["category_id"] == 1]}
    root = write_coco_root(tmp_path / "coco", data)
    overrides = ['dataset.name="coco"', f'dataset.root="{root}"', 'dataset.train_split="train2017"']
    overrides += ['dataset.val_split=""']
    from click.testing import CliRunner

    from labelgen.cli import main

    args = ["--dataset", "coco", "--recipe", str(TINY_RECIPE), "--data-root", str(root)]
    args += ["--run-dir", str(tmp_path / "run")]
    args += ["--set", 'dataset.train_split="train2017"', "--set", 'dataset.val_split=""', "--dry-run"]
    note = "note: the class list of this coco data set is not known before its index has run"
    before_index = CliRunner().invoke(main, ["run", "full", *args])
    assert before_index.exit_code == 0 and note in before_index.output, before_index.output
    no_decoder = CliRunner().invoke(main, ["run", "pseudo_labels", *args])  # nothing to check against classes
    assert no_decoder.exit_code == 0 and note not in no_decoder.output, no_decoder.output
    with pytest.raises(ConfigError, match=r"clip_start=1.2 is not below 0.69, .* on 2 labels"):
        run_pipeline(tiny_recipe(*overrides), tmp_path / "run", "full", client)
    states = [(r.stage, r.state) for r in run_status(tmp_path / "run")]
    assert states[0] == ("index", "done") and all(state == "missing" for _, state in states[1:]), states
    assert not [p for p in (tmp_path / "run").glob("*/*") if p.is_dir() and p.parent.name != "index"]
    # now that the index has read the categories, a dry run of the same run checks against them
    result = CliRunner().invoke(main, ["run", "full", *args])
    assert result.exit_code == 2 and "clip_start=1.2 is not below 0.69" in result.output, result.output
    result = run_pipeline(tiny_recipe(*overrides, "train_decoder.clip_start=0.27"), tmp_path / "run", "index", client)
    assert load_manifest(result["index"]).num_labels == 2


def test_a_users_own_folder_recipe_keeps_the_negatives(tmp_path):
    """Issue 18 §8: `untagged = "keep"` belongs to the folder data set, not to its shipped recipe: a
    person's own recipe naming the data set keeps every negative, --dry-run says where the value came
    from, and a value the recipe gives wins."""
    from click.testing import CliRunner

    from labelgen.cli import main
    from labelgen.config import load_recipe, recipe_path
    from labelgen.pipeline.indexing import index_dataset

    root = _single_class_folder(tmp_path / "data")
    mine = tmp_path / "mine.toml"
    mine.write_text('[dataset]\nname = "folder"\n\n[train_cam]\nepochs = 30\n')
    recipe = load_recipe(mine, [f'dataset.root="{root}"'])
    assert (recipe["dataset"].untagged, recipe["dataset"].val_split) == ("keep", "")
    manifest = index_dataset(recipe["dataset"], root, tmp_path / "index", workers=1)
    assert {r.id: r.tags for r in manifest.records} == {"74": (1,), "9": (), "472": ()}  # label 1: person
    # the shipped recipe resolves the same values (so existing runs keep their cache keys)
    shipped = load_recipe(recipe_path("folder"), [f'dataset.root="{root}"'])["dataset"]
    assert (shipped.untagged, shipped.val_split) == ("keep", "")

    args = ["run", "index", "--dataset", "folder", "--recipe", str(mine), "--data-root", str(root), "--dry-run"]
    result = CliRunner().invoke(main, [*args, "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    own = "the folder data set's own defaults (no recipe or --set gave them): "
    assert own + "dataset.untagged = 'keep', dataset.val_split = ''" in result.output

    mine.write_text('[dataset]\nname = "folder"\nuntagged = "leave_out"\n')
    recipe = load_recipe(mine, [f'dataset.root="{root}"'])
    assert recipe["dataset"].untagged == "leave_out" and recipe.dataset_defaults == ("val_split",)
