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
