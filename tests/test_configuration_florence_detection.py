"""Tests of `modeling_florence/configuration_florence_detection.py`."""

import pytest
import torch

import modeling_florence as mf
from tests.test_common import tiny_detection_config, tiny_text_config

from florence_testing import open_vocabulary_config


# ----------------------------------------------------------------------------------------------------------------------
# Config and presets
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [("fpn_channels", 0), ("num_dyhead_blocks", -1), ("upsampled_offset_mode", "cuda"), ("out_features", ["stage5"]),
     ("out_features", ["stage2", "stage4"]), ("atss_topk", 0), ("focal_alpha", 1.5), ("nms_iou_threshold", -0.1),
     ("prior_prob", 1.0), ("dyhead_norm_groups", 5), ("box_coder_weights", [1.0, 1.0, 1.0]), ("anchor_scale", 0),
     ("max_detections", 0), ("giou_loss_weight", -1.0)],
)
def test_invalid_config_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_detection_config(**{field: value})


def test_open_vocabulary_config_needs_projection_dim_and_serialises():
    with pytest.raises(ValueError, match="projection_dim"):
        tiny_detection_config(text_config=tiny_text_config().to_dict())
    config = open_vocabulary_config()
    reloaded = mf.FlorenceDetectionConfig.from_dict(config.to_dict())
    assert reloaded.is_open_vocabulary and reloaded.text_config.hidden_size == 32 and reloaded.projection_dim == 24
    closed = mf.FlorenceDetectionConfig.from_dict(tiny_detection_config().to_dict())
    assert closed.text_config is None and not closed.is_open_vocabulary


def test_presets_build_the_papers_head():
    tiny = mf.load_preset("florence-detection-tiny")
    assert isinstance(tiny, mf.FlorenceDetectionConfig) and tiny.is_open_vocabulary
    assert tiny.strides == [8, 16, 32, 64, 128]
    assert tiny.vision_config.to_dict()["depths"] == mf.load_preset("florence-tiny").vision_config.depths
    base = mf.load_preset("florence-detection-base")
    assert (base.fpn_channels, base.num_dyhead_blocks, base.atss_topk, base.anchor_scale) == (256, 6, 9, 8.0)
    assert not base.is_open_vocabulary and base.num_labels == 80  # COCO; open vocabulary comes from from_florence
    assert base.vision_config.embed_dim == 128 and base.vision_config.depths == [2, 2, 18, 2]
    with torch.device("meta"):
        model = mf.FlorenceForObjectDetection(base)
    block = sum(p.numel() for p in model.dyhead[0].parameters())
    # 3 DCNs (256*256*9 + 256) + 3 GroupNorms + offset conv (27*256*9 + 27) + scale attn (257) + DyReLU (256*64+64 +
    # 64*1024+1024): the paper's head.
    assert block == 3 * (256 * 256 * 9 + 256 + 512) + 27 * 256 * 9 + 27 + 257 + 256 * 64 + 64 + 64 * 1024 + 1024
