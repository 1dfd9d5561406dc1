import pytest

from labelgen.config import ExportCamsParams, PredictParams, load_recipe, recipe_path, significant_params
from labelgen.errors import ConfigError
from tests.conftest import TINY_RECIPE, tiny_recipe


def test_shipped_recipes_resolve():
    for name in ("demo", "voc", "coco", "folder"):
        recipe = load_recipe(recipe_path(name))
        assert recipe["dataset"].name == name


def test_override_types_are_parsed_and_checked():
    r = tiny_recipe(
        "train_cam.epochs=3", "export_cams.scales=[1.0, 0.8]", "pseudo_labels.crf=false", "dataset.val_split="
    )
    assert r["train_cam"].epochs == 3
    assert r["export_cams"].scales == (1.0, 0.8)
    assert r["pseudo_labels"].crf is False
    assert r["dataset"].val_split == ""
    with pytest.raises(ConfigError, match="expected int"):
        tiny_recipe("train_cam.epochs=three")


def test_unknown_keys_are_errors_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        tiny_recipe("train_cam.epoch=3")
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY_RECIPE.read_text() + "\n[train_cams]\nepochs = 1\n")
    with pytest.raises(ConfigError, match="did you mean 'train_cam'"):
        load_recipe(bad)


def test_insignificant_params_stay_out_of_the_key():
    params = significant_params(ExportCamsParams())
    assert "batch_size" not in params and "device" not in params
    assert params["scales"] == [1.0, 1.2]
    assert "attention_cache_mb" not in params  # speed and memory only: the CAMs are bit-identical
    assert params["max_side"] == 1024 and significant_params(PredictParams())["max_side"] == 2048  # change outputs


@pytest.mark.parametrize(
    "override,message",
    [
        ("export_cams.cam=fien", "--set export_cams.cam=fien: 'fien' is not one of 'fine', 'fused', 'coarse'"),
        ("train_cam.selection=gt-miou", "--set train_cam.selection=gt-miou: 'gt-miou' is not one of 'last', 'gt_miou'"),
        ("dataset.voc_tags_from=json", "'json' is not one of 'masks', 'xml'"),
        ("train_cam.fusion=max", "--set train_cam.fusion=max: 'max' is not one of 'aaf', 'mean'"),
        ("train_decoder.scale_range=[0.5]", "--set train_decoder.scale_range=[0.5]: expected 2 values, got [0.5] (1)"),
        (
            "train_cam.epoch=1",
            "--set train_cam.epoch=1: unknown setting 'epoch' in [train_cam]; did you mean 'epochs'?",
        ),
        (
            "export_cams.scales=[1.2, 1.0]",
            "--set export_cams.scales=[1.2, 1.0]: (1.2, 1.0): the first scale must be 1.0",
        ),
        ("predict.window_stride=600", "--set predict.window_stride=600: 600: must be ≤ predict.window=160"),
        ("train_cam.num_workers=two", "--set train_cam.num_workers=two: 'two': expected a count of loader processes"),
        ("pseudo_labels.bg_threshold=43", "--set pseudo_labels.bg_threshold=43: 43.0: CAMs are normalised to 0..1"),
        (
            "train_decoder.masks=/no/such/folder",
            "--set train_decoder.masks=/no/such/folder: '/no/such/folder': must be",
        ),
        ("precision.auto=1", "--set precision.auto=1: unknown section [precision]"),
    ],
)
def test_every_setting_is_checked_when_the_recipe_loads(override, message):
    with pytest.raises(ConfigError) as e:
        load_recipe(recipe_path("demo"), [override])
    assert message in str(e.value)


def test_all_wrong_settings_are_reported_at_once_one_line_each(tmp_path):
    from click.testing import CliRunner

    from labelgen.cli import main

    args = ["run", "full", "--dataset", "demo", "--run-dir", str(tmp_path), "--set", "train_cam.epochs=0"]
    args += ["--set", "train_cam.warmup_epochs=1"]  # wrong only because epochs is: not a line of its own
    args += ["--set", "export_cams.cam=fien", "--set", "foo.bar=1"]  # a bad value and an unknown section
    result = CliRunner().invoke(main, [*args, "--set", "predict.window=8", "--set", "train_cam.random_erasing=2"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["error"] * 5
    assert lines[0].startswith("error: --set foo.bar=1: unknown section [foo]")
    assert lines[1] == "error: --set export_cams.cam=fien: 'fien' is not one of 'fine', 'fused', 'coarse'"
    assert lines[2] == "error: --set train_cam.epochs=0: 0: must be > 0"  # a range, checked beside the values
    assert lines[3].startswith("error: --set train_cam.random_erasing=2: 2.0: is a probability")
    assert "demo.toml [predict] window_stride: 112: must be ≤ predict.window=8" in lines[4]  # a rule between two
    assert not (tmp_path / "recipe.json").exists()


def test_several_wrong_settings_are_all_named():
    with pytest.raises(ConfigError) as e:
        load_recipe(
            recipe_path("demo"),
            ["export_cams.cam=fien", "train_decoder.scale_range=[0.5]", "train_cam.epocs=3", "train_decoder.epocs=3"],
        )
    lines = str(e.value).splitlines()
    assert len(lines) == 4 and all(line.startswith("--set ") for line in lines)


@pytest.mark.parametrize(
    "override,message",
    [
        ("export_cams.attention_cache_mb=-1", "--set export_cams.attention_cache_mb=-1: -1: must be ≥ 0 MiB"),
        ("evaluate.shard_size=0", "--set evaluate.shard_size=0: 0: must be > 0"),
        ("evaluate.thumbnail=8", "--set evaluate.thumbnail=8: 8: must be ≥ 16 pixels"),
        ("evaluate.gallery_page=0", "--set evaluate.gallery_page=0: 0: must be > 0 rows"),
    ],
)
def test_rules_once_checked_inside_a_stage_refuse_a_dry_run_before_any_work(tmp_path, override, message):
    """Settings that export_cams and evaluate checked only when they planned their units (after the
    stages before them had run, minutes or hours in) are refused with the rest when the recipe
    loads: `run --dry-run` names them, and a run starts no cluster."""
    from click.testing import CliRunner

    from labelgen.cli import main

    args = ["run", "full", "--dataset", "demo", "--recipe", str(TINY_RECIPE), "--run-dir", str(tmp_path)]
    for extra in (["--dry-run"], []):
        result = CliRunner().invoke(main, [*args, "--set", override, *extra])
        assert result.exit_code == 2
        assert result.output.startswith(f"error: {message}") and len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing run, nothing written
