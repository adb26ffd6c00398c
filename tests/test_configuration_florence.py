"""Tests of `modeling_florence/configuration_florence.py`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

import modeling_florence as mf
from modeling_florence import FlorenceModel, FlorenceTextConfig, FlorenceVisionConfig, FlorenceVisionModel
from modeling_florence.configuration_florence import check_overrides
from modeling_florence.configuration_florence_video import FlorenceVideoVisionConfig
from modeling_florence.recipe_florence import check_overrides as recipe_check


PRESETS = mf.available_presets()
WITH_VISION = [name for name in PRESETS if "vision_config" in mf.load_preset(name).to_dict()]
REPO = Path(__file__).resolve().parent.parent
# A top-level field of each preset's config and a valid new value (Florence-2 configs have no initializer field:
# Transformers' Florence2Config initialises from its sub-configs).
REAL_FIELDS = {"initializer_factor": 0.5, "initializer_range": 0.5, "max_temporal_embeddings": 64}


def test_recipes_and_presets_share_one_override_check():
    assert recipe_check is check_overrides


@pytest.mark.parametrize("name", WITH_VISION)
def test_a_typo_in_a_sub_config_override_names_the_key_and_the_fields(name):
    with pytest.raises(ValueError, match=r"vision_config\.windw_size is not a field.*did you mean 'window_size'"):
        mf.load_preset(name, vision_config={"windw_size": 2})


@pytest.mark.parametrize("name", PRESETS)
def test_a_top_level_typo_is_refused_and_a_real_field_still_applies(name):
    with pytest.raises(ValueError, match=r"initializer_rnge is not a field.*fields: \["):
        mf.load_preset(name, initializer_rnge=0.1)
    fields = mf.load_preset(name).to_dict()
    field, value = next((field, value) for field, value in REAL_FIELDS.items() if field in fields)
    assert getattr(mf.load_preset(name, **{field: value}), field) == value


def test_a_sub_config_override_still_merges_into_the_preset():
    config = mf.load_preset("florence-tiny", vision_config={"window_size": 2})
    assert config.vision_config.window_size == 2
    assert config.vision_config.depths == mf.load_preset("florence-tiny").vision_config.depths


@pytest.mark.parametrize("name", ["../configuration/florence-tiny", "/etc/passwd", "sub/florence-tiny",
                                  "..\\florence-tiny", ".hidden", ""])
def test_preset_names_that_are_paths_are_refused(name):
    with pytest.raises(ValueError, match="not paths"):
        mf.load_preset(name)


def test_a_json_file_outside_the_presets_is_never_read(tmp_path):
    outside = tmp_path / "evil.json"
    outside.write_text(json.dumps({"model_type": "florence", "projection_dim": 3}))
    with pytest.raises(ValueError, match="not paths"):
        mf.load_preset(str(tmp_path / "evil"))


@pytest.mark.parametrize(
    "config_class, key, close",
    [(mf.FlorenceVisionConfig, "embed_dims", "embed_dim"), (mf.FlorenceTextConfig, "hidden_sise", "hidden_size"),
     (mf.FlorenceConfig, "projection_dims", "projection_dim"), (mf.FlorenceDetectionConfig, "fpn_channel",
                                                                "fpn_channels"),
     (FlorenceVideoVisionConfig, "window_sise", "window_size"), (mf.FlorenceVideoConfig, "classifier_drop",
                                                                 "classifier_dropout"),
     (mf.FlorenceVQAConfig, "num_fusion_layer", "num_fusion_layers"), (mf.FlorenceConfig, "zzz", None)],
)
def test_unknown_config_kwargs_are_refused_naming_the_closest_field(config_class, key, close):
    with pytest.raises(ValueError, match=rf"Unknown {config_class.__name__} argument\(s\) '{key}'") as error:
        config_class(**{key: 64})
    if close is not None:
        assert f"did you mean '{close}'" in str(error.value)


def test_transformers_own_kwargs_still_work():
    config = mf.FlorenceVisionConfig(num_labels=4, output_attentions=True, torch_dtype="float32",
                                     out_features=["stage2"], use_cache=False, tie_word_embeddings=False)
    assert config.num_labels == 4 and config.out_features == ["stage2"]
    detector = mf.FlorenceDetectionConfig(id2label={0: "a", 1: "b"}, architectures=["FlorenceForObjectDetection"])
    assert detector.num_labels == 2


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_round_trips_through_save_and_load(name, tmp_path):
    config = mf.load_preset(name)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is type(config)
    expected, found = config.to_dict(), loaded.to_dict()
    expected.pop("_name_or_path"), found.pop("_name_or_path")
    assert found == expected
    assert type(config).from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_constructor_keywords_such_as_num_labels_are_valid_overrides():
    assert mf.load_preset("florence-vqa-tiny", num_labels=7).num_labels == 7


# --- configs and presets ------------------------------------------------------------------------------------------
def test_every_preset_loads_and_unknown_preset_is_named():
    names = mf.available_presets()
    for expected in ("coswin-t", "coswin-s", "coswin-b", "coswin-l", "coswin-h", "florence-tiny", "florence-base"):
        assert expected in names
    assert isinstance(mf.load_preset("coswin-b"), FlorenceVisionConfig)
    assert mf.load_preset("coswin-b").embed_dim == 128
    base = mf.load_preset("florence-base")
    assert base.text_config.hidden_size == 512 and base.text_config.num_hidden_layers == 12
    with pytest.raises(ValueError, match="Unknown preset 'coswin-x'.*coswin-t"):
        mf.load_preset("coswin-x")


def test_preset_sub_config_overrides_merge_into_the_preset():
    tiny = mf.load_preset("florence-tiny")
    smaller = mf.load_preset("florence-tiny", vision_config={"image_size": 32}, projection_dim=64)
    assert smaller.vision_config.image_size == 32 and smaller.projection_dim == 64
    assert smaller.vision_config.depths == tiny.vision_config.depths
    assert smaller.vision_config.embed_dim == tiny.vision_config.embed_dim
    assert smaller.text_config.to_dict() == tiny.text_config.to_dict()


def test_florence_huge_matches_the_paper_sizes():
    """CoSwin-H 637M and a 256M text tower (Florence Sec. 2.3), each within 5%, counted without allocating."""
    with torch.device("meta"):
        huge = FlorenceModel(mf.load_preset("florence-huge"))
    vision = sum(p.numel() for p in huge.vision_model.parameters())
    text = sum(p.numel() for p in huge.text_model.parameters())
    assert abs(vision / 637e6 - 1) < 0.05, vision
    assert abs(text / 256e6 - 1) < 0.05, text


def test_presets_ship_as_package_data(tmp_path):
    """A normal (non-editable) install carries `configuration/` as `modeling_florence/presets`."""
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=REPO, check=True, capture_output=True,
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import modeling_florence as m; "
        "assert m.__file__.startswith(sys.argv[1]), m.__file__; "
        "print(m.presets_dir(), m.load_preset('coswin-t').embed_dim)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert str(tmp_path) in result.stdout and result.stdout.strip().endswith("96")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_heads=[3, 0, 12, 24]), "num_heads"),
        (dict(depths=[2, 2], num_heads=[3, 6, 12]), "depths and num_heads"),
        (dict(patch_embed="overlap"), "patch_embed"),
        (dict(downsample="pool"), "downsample"),
    ],
)
def test_invalid_vision_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FlorenceVisionConfig(**kwargs)


def test_head_widths_are_checked_when_the_model_is_built():
    config = FlorenceVisionConfig(embed_dim=37)  # serialisable, as Swin's configs (Transformers' ConfigTester uses 37)
    assert FlorenceVisionConfig.from_dict(config.to_dict()).embed_dim == 37
    with pytest.raises(ValueError, match=r"num_heads\[0\]=3 does not divide the stage width 37"):
        FlorenceVisionModel(config)


def test_invalid_text_config_names_the_field():
    with pytest.raises(ValueError, match="num_attention_heads"):
        FlorenceTextConfig(hidden_size=100, num_attention_heads=3)
