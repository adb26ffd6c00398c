"""Tests of `modeling_florence/configuration_florence_video.py`."""

import pytest
from transformers import AutoConfig

import modeling_florence as mf
from modeling_florence import FlorenceVideoConfig, FlorenceVideoVisionConfig


# --- config --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"patch_size": (2, 4)}, "patch_size"),
        ({"window_size": (8, 0, 7)}, "window_size"),
        ({"window_sizes": [(8, 7, 7)]}, "window_sizes"),
        ({"window_sizes": [(8, 7, 7), (8, 7)] + [(8, 7, 7)] * 2}, r"window_sizes\[1\]"),
        ({"patch_embed": "tubelet"}, "patch_embed"),
        ({"downsample": "pool"}, "downsample"),
        ({"window_bias": "nearest"}, "window_bias"),
        ({"num_heads": [3, 6, 12, 25]}, r"num_heads\[3\]"),
        ({"depths": [2, 2]}, "depths and num_heads"),
        ({"num_frames": 0}, "num_frames"),
        ({"temporal_kernel_size": 2}, "temporal_kernel_size"),
    ],
)
def test_invalid_video_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FlorenceVideoVisionConfig(**kwargs)


def test_video_config_defaults_presets_and_roundtrip(tmp_path):
    default = FlorenceVideoVisionConfig()
    assert default.patch_size == [2, 4, 4] and default.window_size == [8, 7, 7]
    assert default.stage_window_sizes == [[8, 7, 7]] * 4
    assert FlorenceVideoVisionConfig(window_size=5).window_size == [5, 5, 5]
    tiny = mf.load_preset("florence-video-tiny")
    assert isinstance(tiny, FlorenceVideoConfig) and tiny.num_frames == 8
    assert tiny.vision_config.stage_window_sizes[0] == [2, 4, 4]  # dynamic window: smaller early
    base = mf.load_preset("florence-video-base")
    assert base.vision_config.embed_dim == 128 and base.text_config.num_hidden_layers == 12
    assert {"florence-video-tiny", "florence-video-base"} <= set(mf.available_presets())
    with pytest.raises(ValueError, match="projection_dim"):
        FlorenceVideoConfig(projection_dim=0)
    tiny.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, FlorenceVideoConfig) and reloaded.model_type == "florence_video"
    assert reloaded.vision_config.window_sizes == tiny.vision_config.window_sizes
    assert reloaded.to_dict()["num_frames"] == 8  # the video-classification pipeline reads config.num_frames
