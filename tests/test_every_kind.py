"""Issue 11, done-when: a folder holding every kind of bad input at once. `labelgen data check`
lists every problem, one line each, and a full run on that folder completes with the good images."""

import json
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from labelgen.cli import main
from tests.badfiles import write_corpus
from tests.realdata import coco_photo, save_exif_rotated

GOOD = 10  # good photos: enough for the tiny recipe's batches


def _photo(image_id: int, size: tuple[int, int]) -> Image.Image:
    return Image.open(coco_photo(image_id)).convert("RGB").resize(size)


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    """classes: person, dog. Returns the root and, per image file, the expected `action` (None = clean)."""
    root = tmp_path_factory.mktemp("every_kind")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    (root / "classes.txt").write_text("person\ndog\n")
    rows, expect = ["image,tags,split"], {}
    ids = (73, 472, 636, 74, 9, 25, 30, 34, 36, 42)
    for n in range(GOOD):
        _photo(ids[n], (96, 72)).save(images / f"good{n}.jpg")
        rows.append(f"images/good{n}.jpg,{'person' if n % 2 else 'person;dog'},train")
        expect[f"good{n}.jpg"] = None
    obj = np.zeros((72, 96), np.uint8)
    obj[20:50, 30:70] = 1
    # masks: a 0/255 export, and one whose class index is off by one
    _photo(9, (96, 72)).save(images / "binary.jpg")
    Image.fromarray(obj * 255).save(masks / "binary.png")
    rows.append("images/binary.jpg,dog,train")
    expect["binary.jpg"] = "kept; GT not scored"
    _photo(25, (96, 72)).save(images / "offbyone.jpg")
    Image.fromarray(obj).save(masks / "offbyone.png")  # draws 'person' (1) for a 'dog' photo
    rows.append("images/offbyone.jpg,dog,train")
    expect["offbyone.jpg"] = "kept; GT not scored"
    # a phone photo: stored turned, EXIF tag, mask drawn on the upright photo
    upright = _photo(472, (128, 48))
    upright.save(root / "upright.jpg")
    save_exif_rotated(root / "upright.jpg", images / "phone.jpg", 6)
    (root / "upright.jpg").unlink()
    phone_mask = np.zeros((48, 128), np.uint8)
    phone_mask[10:40, 20:110] = 2
    Image.fromarray(phone_mask).save(masks / "phone.png")
    rows.append("images/phone.jpg,dog,train")
    expect["phone.jpg"] = "EXIF orientation applied"
    # sizes: smaller than a patch, a strip, a large photo
    for name, size in (("tiny.jpg", (12, 12)), ("strip.jpg", (10, 1000)), ("large.jpg", (2016, 1512))):
        _photo(30, size).save(images / name)
        rows.append(f"images/{name},person,train")
        expect[name] = None
    # broken and unusual files (corpus: good, gray, cmyk, sixteen, alpha, palette, truncated, empty, text)
    corpus = write_corpus(images / "corpus")
    for name in corpus:
        rows.append(f"images/corpus/{name},person,train")
    expect.update({"truncated.jpg": "left out", "empty.jpg": "left out", "text.jpg": "left out"})
    for name in ("gray.jpg", "cmyk.jpg", "sixteen.png", "alpha.png", "palette.png"):
        expect[name] = "converted when read"
    expect["good.jpg"] = None
    # rows: two tags read as tag + split, a split not indexed, a case mistake, a missing file
    for name in ("twotags", "testsplit", "case"):
        _photo(36, (96, 72)).save(images / f"{name}.jpg")
    rows += [
        "images/twotags.jpg,person,dog",
        "images/testsplit.jpg,person,test",
        "images/case.jpg,Dog,train",
        "images/nowhere.jpg,person,train",
    ]
    expect.update({"twotags.jpg": "left out", "testsplit.jpg": "not indexed (split not used)"})
    expect.update({"case.jpg": "left out", "nowhere.jpg": "left out"})
    (root / "tags.csv").write_text("\ufeff" + "\n".join(rows) + "\n")
    return root, expect


def test_data_check_lists_every_problem_one_line_each(every_kind):
    root, expect = every_kind
    result = CliRunner().invoke(main, ["data", "check", "--dataset", "folder", "--data-root", str(root)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    summary = lines[-1]
    for name, action in expect.items():
        mine = [ln for ln in lines[:-1] if f"/{name}:" in ln]
        if action is None:
            assert not mine, mine
        else:
            assert len(mine) == 1 and mine[0].endswith(f"[{action}]"), (name, mine)
    tags_csv = str(root / "tags.csv")
    by_line = {ln.split(" ", 1)[0].rsplit(":", 1)[1]: ln for ln in lines if ln.startswith(tags_csv + ":")}
    last = len((root / "tags.csv").read_text().splitlines())
    assert "'dog' is a class name" in by_line[str(last - 3)]
    assert "not indexed" in by_line[str(last - 2)]
    assert "did you mean 'dog'" in by_line[str(last - 1)]
    assert "not found" in by_line[str(last)]
    usable = GOOD + 2 + 1 + 3 + 6  # good, two masks kept without GT, phone, three sizes, six corpus images
    assert summary.startswith(f"{usable} usable images;")
    assert "3 left out" not in summary and "6 left out" in summary  # 3 broken files + 3 rows
    assert "1 not indexed (split not used)" in summary


@pytest.mark.slow
def test_a_full_run_on_every_kind_completes_with_the_good_images(every_kind, tmp_path):
    from tests.conftest import TINY_RECIPE
    from tests.killing import labelgen_cmd

    root, _ = every_kind

    cmd = labelgen_cmd(
        "run", "full", "--dataset", "folder", "--data-root", str(root), "--recipe", str(TINY_RECIPE),
        "--run-dir", str(tmp_path / "run"), "--set=dataset.val_split=\"\"",
        "--set=train_decoder.clip_start=0.43",  # 3 labels: below ln 3 (else refused)
    )  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    manifest = json.loads(next((tmp_path / "run").glob("index/*/manifest.json")).read_text())
    ids = {r["id"] for r in manifest["records"]}
    assert {"tiny", "strip", "large", "phone", "binary", "offbyone"} <= ids
    metrics = json.loads(next((tmp_path / "run").glob("evaluate/*/metrics.json")).read_text())
    page = next((tmp_path / "run").glob("evaluate/*/report.html"))
    assert f"report: {page} (and {page.with_name('report.md')})" in done.stdout  # the run's last line
    assert metrics["pseudo_labels"]["images"] == 1  # only the phone photo has GT that is scored
