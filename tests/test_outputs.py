"""Stages declare their outputs (`Stage.outputs`); a stage reads another's files only through
`StageContext.input_path`, and export and status find them through the same declarations."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from labelgen.cli import main
from labelgen.errors import ArtifactError
from labelgen.formats.source import export_source
from labelgen.pipeline.dag import OPTIONAL, ORDER, STAGES
from labelgen.pipeline.runner import plan_run, prepare_run
from labelgen.pipeline.stage import StageContext, output_path
from labelgen.pipeline.status import run_status
from tests.conftest import tiny_recipe

STAGES_DIR = Path(__file__).parents[1] / "labelgen" / "stages"

# Each stage's outputs as a reader finds them in the tiny run (train and val splits).
EXPECTED = {
    ("index", "manifest", ()): "manifest.json",
    ("index", "problems", ()): "problems.json",
    ("train_cam", "model", ()): "model.pt",
    ("train_cam", "log", ()): "log.jsonl",
    ("export_cams", "cams", ()): "cams.zarr",
    ("pseudo_labels", "masks", ()): "masks.zarr",
    ("train_decoder", "model", ()): "model.pt",
    ("train_decoder", "log", ()): "log.jsonl",
    ("predict", "masks", (("split", "train"),)): "masks_train.zarr",
    ("predict", "masks", (("split", "val"),)): "masks_val.zarr",
    ("predict", "unrestricted", (("split", "train"),)): "unrestricted_train.zarr",  # restrict_to_tags="train"
    ("evaluate", "metrics", ()): "metrics.json",
    ("evaluate", "report", ()): "report.md",
    ("evaluate", "report_html", ()): "report.html",
    ("evaluate", "per_image", ()): "per_image.csv",
}
# a stage only runs where people's corrections were pulled: checked on such a run in tests/test_review.py
OPTIONAL_EXPECTED = {
    ("corrections", "masks", ()): "corrected_masks",
    ("corrections", "provenance", ()): "provenance.json",
}


def _plan(run_dir: Path):
    return {p.stage.name: p for p in plan_run(tiny_recipe(), run_dir, "full")}


def _ctx(plan, stage: str) -> StageContext:
    p = plan[stage]
    return StageContext(params=p.params, recipe=tiny_recipe(), artifact=p.artifact, inputs=p.inputs)


def test_every_declared_output_resolves_in_a_finished_run(tiny_full_run):
    plan = _plan(tiny_full_run)
    declared = {(s, o.name) for s in ORDER for o in STAGES[s].outputs}
    assert declared == {(s, n) for s, n, _ in {**EXPECTED, **OPTIONAL_EXPECTED}}
    for (stage, name, params), file in EXPECTED.items():
        art = plan[stage].artifact
        assert output_path(STAGES[stage], art, name, **dict(params)) == art.path / file
        assert art.success()["outputs"][name] == sorted(
            f for (s, n, _), f in EXPECTED.items() if (s, n) == (stage, name)
        )
    evaluate = _ctx(plan, "evaluate")
    assert evaluate.input_path("predict", "masks", split="val") == plan["predict"].artifact.path / "masks_val.zarr"
    assert evaluate.input_paths("predict", "masks") == {
        s: plan["predict"].artifact.path / f"masks_{s}.zarr" for s in ("train", "val")
    }
    assert evaluate.input_path("index", "manifest") == plan["index"].artifact.path / "manifest.json"
    assert (
        _ctx(plan, "predict").output_path("masks", split="train") == plan["predict"].artifact.path / "masks_train.zarr"
    )


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and isinstance(e.value, ArtifactError)
    return message


def test_reading_what_is_not_declared_or_not_an_input_is_one_line(tiny_full_run):
    plan = _plan(tiny_full_run)
    predict = _ctx(plan, "predict")
    with pytest.raises(ArtifactError) as e:
        predict.input_path("pseudo_labels", "masks")
    message = _one_line(e)
    assert message.startswith(f"predict of run {tiny_full_run} reads output 'masks' of pseudo_labels")
    assert "not one of its inputs in this run (index, train_decoder)" in message
    assert message.endswith("add pseudo_labels to the inputs predict declares")
    with pytest.raises(ArtifactError) as e:
        predict.input_path("train_decoder", "weights")
    assert _one_line(e) == (
        f"run {tiny_full_run}: train_decoder declares no output 'weights' (it declares: model, log); read one of "
        "those, or declare it in the outputs of labelgen/stages/train_decoder.py"
    )
    with pytest.raises(ArtifactError) as e:
        _ctx(plan, "evaluate").input_path("predict", "masks")  # one store per split: which one?
    assert "output 'masks' is masks_{split}.zarr: it takes split, not no field" in _one_line(e)


def test_a_deleted_output_is_one_line_from_input_path_export_and_status(tiny_full_run, tmp_path):
    plan = _plan(tiny_full_run)
    store = plan["pseudo_labels"].artifact.path / "masks.zarr"
    aside = store.with_name("masks.zarr.aside")
    store.rename(aside)  # the shared run is read-only for tests: put it back whatever happens
    try:
        with pytest.raises(ArtifactError) as e:
            _ctx(plan, "train_decoder").input_path("pseudo_labels", "masks")
        assert _one_line(e) == (
            f"pseudo_labels output 'masks' of run {tiny_full_run} is missing: no {store}; rerun the command "
            "that made this run with `--force pseudo_labels` added"
        )
        with pytest.raises(ArtifactError) as e:
            export_source(tiny_full_run, "pseudo_labels")
        assert _one_line(e).startswith(f"pseudo_labels output 'masks' of run {tiny_full_run} is missing")
        result = CliRunner().invoke(
            main,
            ["export", "--run-dir", str(tiny_full_run), "--what", "pseudo_labels", "--format", "voc"]
            + ["--out", str(tmp_path / "out")],
        )
        assert result.exit_code != 0 and "Traceback" not in result.output
        (line,) = result.output.strip().splitlines()
        assert "pseudo_labels output 'masks'" in line and "is missing" in line
        states = {r.stage: (r.state, r.detail) for r in run_status(tiny_full_run)}
        assert states["pseudo_labels"] == (
            "damaged",
            "output masks (masks.zarr) is missing; rerun with --force pseudo_labels added",
        )
        assert states["predict"][0] == "done"
        # a run that would read it is refused before anything is moved aside or run (--force evaluate
        # once moved the good report away, then failed)
        evaluate = plan["evaluate"].artifact.path
        with pytest.raises(ArtifactError) as e:
            prepare_run(tiny_recipe(), tiny_full_run, "full", force=("evaluate",))
        assert _one_line(e) == (
            f"pseudo_labels output 'masks' of run {tiny_full_run} is missing: no {store}; rerun the command that "
            "made this run with `--force pseudo_labels` added"
        )
        assert (evaluate / "_SUCCESS.json").is_file() and not list(evaluate.parent.glob("*.replaced-*"))
    finally:
        aside.rename(store)
    predict = plan["predict"].artifact.path
    (predict / "masks_val.zarr").rename(predict / "masks_val.zarr.aside")
    try:  # one split's store gone: an error, not a quietly smaller export of the other split
        with pytest.raises(ArtifactError) as e:
            export_source(tiny_full_run, "predictions")
        assert _one_line(e).startswith(
            f"predict output 'masks' of run {tiny_full_run} is missing: no {predict / 'masks_val.zarr'}; "
        )
    finally:
        (predict / "masks_val.zarr.aside").rename(predict / "masks_val.zarr")


def _foreign_names(stage: str | None) -> tuple[set[str], set[tuple[str, str]]]:
    """Other stages' declared file names (also as globs), and the (head, tail) of those with a field."""
    own = {o.pattern for o in STAGES[stage].outputs} if stage else set()
    plain, split = set(), set()
    for other in ORDER:
        for out in STAGES[other].outputs:
            if out.pattern in own:
                continue
            if out.param:
                head, _, tail = out.pattern.partition(f"{{{out.param}}}")
                plain.add(f"{head}*{tail}")
                split.add((head, tail))
            else:
                plain.add(out.pattern)
    return plain, split


def _spelled_names(tree: ast.AST, plain: set[str], split: set[tuple[str, str]]) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in plain:
            found.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
            found += [f"{h}{{…}}{t}" for h, t in split if parts and parts[0] == h and parts[-1] == t]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("labelgen.stages."):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.isupper()]
    return found


@pytest.mark.parametrize("stage", ORDER)
def test_a_stage_spells_no_other_stages_file_names(stage):
    """A stage reaches another stage's files through `ctx.input_path`: no literal file name of theirs
    and no imported constant (a function such as `load_segmenter` is fine)."""
    plain, split = _foreign_names(stage)
    source = (STAGES_DIR / f"{stage}.py").read_text()
    tree = ast.parse(source)
    own_imports = [
        n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == f"labelgen.stages.{stage}"
    ]
    assert not own_imports
    assert _spelled_names(tree, plain, split) == []


@pytest.mark.parametrize(
    "module",
    [
        "formats/source.py",
        "formats/voc.py",
        "formats/mmseg.py",
        "formats/coco.py",
        "pipeline/status.py",
        "report/markdown.py",
        "report/html.py",
    ],
)
def test_export_status_and_reports_spell_no_stage_file_names(module):
    plain, split = _foreign_names(None)  # every stage's names are foreign here
    tree = ast.parse((STAGES_DIR.parent / module).read_text())
    assert _spelled_names(tree, plain, split) == []


def test_a_run_record_lists_the_declared_outputs(tiny_full_run):
    success = json.loads((_plan(tiny_full_run)["export_cams"].artifact.success_path).read_text())
    assert success["outputs"] == {"cams": ["cams.zarr"]}


def test_status_lists_the_stages_in_pipeline_order(tiny_full_run):
    # the record's JSON keys are sorted; a run without pulled corrections has no corrections stage
    assert [r.stage for r in run_status(tiny_full_run)] == [s for s in ORDER if s not in OPTIONAL]
