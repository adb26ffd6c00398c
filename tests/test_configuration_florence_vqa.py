"""Tests of `modeling_florence/configuration_florence_vqa.py`."""

import pytest
import torch

import modeling_florence as mf
from tests.test_common import tiny_vqa_config


# ----------------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------------
def test_presets_build_the_papers_adapter():
    base = mf.load_preset("florence-vqa-base")
    assert isinstance(base, mf.FlorenceVQAConfig) and base.model_type == "florence_vqa"
    assert (base.hidden_size, base.num_fusion_layers, base.num_attention_heads) == (768, 6, 12)
    assert base.vision_config.embed_dim == 128 and base.vision_config.depths == [2, 2, 18, 2]  # CoSwin-B
    assert base.text_config.hidden_size == 768 and base.text_config.causal_attention is False
    tiny = mf.load_preset("florence-vqa-tiny", num_labels=7)
    assert tiny.num_labels == 7 and tiny.vision_config.embed_dim == 32
    with torch.device("meta"):
        model = mf.FlorenceForVQA(base)
    head = model.vqa_head
    assert [type(m) for m in head.children()] == [torch.nn.Linear, torch.nn.LayerNorm, torch.nn.GELU, torch.nn.Linear]
    assert head.dense.weight.shape == (1536, 1536) and head.classifier.in_features == 1536


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hidden_size": 30}, "num_attention_heads"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_fusion_layers": 0}, "num_fusion_layers"),
        ({"num_attention_heads": -1}, "num_attention_heads"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        ({"attention_probs_dropout_prob": -0.1}, "attention_probs_dropout_prob"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"mask_token_id": 10**6}, "mask_token_id"),
    ],
)
def test_invalid_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_vqa_config(**overrides)


def test_config_round_trips_and_loads_through_autoconfig(tmp_path):
    from transformers import AutoConfig

    config = tiny_vqa_config(id2label={0: "yes", 1: "no", 2: "red", 3: "2", 4: "circle"})
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "FlorenceVQAConfig"
    assert loaded.answers == ["yes", "no", "red", "2", "circle"]
    assert loaded.text_config.causal_attention is False and loaded.vision_config.embed_dim == 16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vision_feature_stages": [2]}, "ending with the last"),
        ({"vision_feature_stages": [3, 2]}, "ascending"),
        ({"vision_feature_stages": [0, 3]}, "in \\[1, 3\\]"),
        ({"vision_feature_stages": []}, "vision_feature_stages"),
        ({"image_position_embeddings": True, "hidden_size": 30, "num_attention_heads": 3}, "divisible by 4"),
    ],
)
def test_invalid_image_stream_settings_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_vqa_config(**overrides)
