import json

from click.testing import CliRunner

from labelgen.cli import main
from labelgen.data.manifest import MANIFEST_SCHEMA
from labelgen.pipeline.runner import run_pipeline
from tests.badfiles import write_corpus
from tests.conftest import COCO128, tiny_recipe


def test_data_check_names_every_broken_file(tmp_path):
    root = tmp_path / "data"
    files = write_corpus(root / "images")
    (root / "classes.txt").write_text("cat\n")
    (root / "tags.csv").write_text("image,tags\n" + "".join(f"images/{n},cat\n" for n in files))
    result = CliRunner().invoke(
        main, ["data", "check", "--dataset", "folder", "--data-root", str(root), "--set", "dataset.val_split="]
    )
    assert result.exit_code == 1
    for name, why in [("truncated.jpg", "truncated"), ("empty.jpg", "zero-byte"), ("text.jpg", "not a readable")]:
        line = next(ln for ln in result.output.splitlines() if name in ln)
        assert why in line and "[left out]" in line
    assert "6 usable images; 5 converted when read, 3 left out" in result.output


def test_data_index_writes_a_manifest(tmp_path):
    out = tmp_path / "coco.json"
    result = CliRunner().invoke(
        main,
        ["data", "index", "--dataset", "coco", "--data-root", str(COCO128), "--split", "train2017", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.read_text())
    assert manifest["schema"] == MANIFEST_SCHEMA and len(manifest["records"]) == 126


def test_user_errors_are_one_line_without_traceback(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "run",
            "index",
            "--dataset",
            "coco",
            "--data-root",
            str(tmp_path),
            "--run-dir",
            str(tmp_path / "r"),
            "--set",
            "train_cam.epoch=1",
        ],
    )
    assert result.exit_code == 2
    assert "did you mean 'epochs'" in result.output and "Traceback" not in result.output


def test_status_json(tmp_path, client):
    run_dir = tmp_path / "run"
    run_pipeline(tiny_recipe(), run_dir, "index", client)
    result = CliRunner().invoke(main, ["status", "--run-dir", str(run_dir), "--json"])
    rows = json.loads(result.output)
    assert [(r["stage"], r["state"]) for r in rows] == [("index", "done")]
    assert rows[0]["path"].endswith(rows[0]["key"])
