"""Tests of `modeling_florence/configuration_florence_generation.py`: the Florence-2 presets (`florence2-base`,
`florence2-large`: the public checkpoints' shapes, checked against Transformers' own Florence-2 classes; and
`florence-generation-tiny`: the model `make demo-generation` builds). Models are built on the meta device only."""

import dataclasses
import math

import pytest
import torch
from transformers import (
    BartConfig,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2VisionConfig,
    PreTrainedConfig,
)

import modeling_florence as mf
from modeling_florence import FlorenceForConditionalGeneration, FlorenceGenerationConfig
from modeling_florence.training_florence_generation import TINY_TEXT_CONFIG, build_generation_model

FLORENCE2 = ("florence2-base", "florence2-large")
GENERATION_PRESETS = (*FLORENCE2, "florence-generation-tiny")
# Parameters of `florence-community/Florence-2-base` / `-large` (tied token table counted once): the paper's 0.23B
# and 0.77B, and what Transformers' `Florence2ForConditionalGeneration` of the same config has.
PARAMETERS = {"florence2-base": 231_443_968, "florence2-large": 770_213_888}
PAPER_BILLIONS = {"florence2-base": 0.23, "florence2-large": 0.77}
# The DaViT's own fields (those of Transformers' `Florence2VisionConfig` that `PreTrainedConfig` does not declare).
DAVIT_FIELDS = sorted({f.name for f in dataclasses.fields(Florence2VisionConfig)}
                      - {f.name for f in dataclasses.fields(PreTrainedConfig)})
# The BART fields that size the language model.
BART_SIZES = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
              "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings")


def davit_fields(vision_config) -> dict:
    """The DaViT fields of a vision config, sequences as lists (Transformers' defaults are tuples, JSON's lists)."""
    values = {name: getattr(vision_config, name) for name in DAVIT_FIELDS}
    return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}


def without_provenance(config: dict) -> dict:
    """A config dict without what loading a folder records (path, architectures, dtype), sub-configs included."""
    return {key: without_provenance(value) if isinstance(value, dict) and key.endswith("_config") else value
            for key, value in config.items() if key not in ("_name_or_path", "architectures", "dtype")}


def count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("name", GENERATION_PRESETS)
def test_generation_presets_load_with_load_preset_and_from_json_file(name):
    config = mf.load_preset(name)
    assert type(config) is FlorenceGenerationConfig and config.model_type == "florence_generation"
    from_file = FlorenceGenerationConfig.from_json_file(mf.presets_dir() / f"{name}.json")
    assert from_file.to_dict() == config.to_dict()
    assert name in mf.available_presets()


def test_florence2_base_davit_is_transformers_default_davit():
    """Transformers' `Florence2VisionConfig()` is Florence-2-base's DaViT, except `projection_dim`: its default (1024)
    is large's language width; base projects to its BART's 768."""
    base = mf.load_preset("florence2-base")
    assert base.vision_tower == "davit" and type(base.vision_config) is Florence2VisionConfig
    expected = dict(davit_fields(Florence2VisionConfig()), projection_dim=768)
    assert davit_fields(base.vision_config) == expected
    assert base.vision_config.embed_dim == [128, 256, 512, 1024] and base.vision_config.depths == [1, 1, 9, 1]


def test_florence2_large_davit_doubles_base_widths_and_heads():
    base, large = mf.load_preset("florence2-base").vision_config, mf.load_preset("florence2-large").vision_config
    doubled = {name: [2 * value for value in getattr(base, name)] for name in ("embed_dim", "num_heads", "num_groups")}
    assert davit_fields(large) == dict(davit_fields(base), **doubled, projection_dim=1024)
    assert large.embed_dim == [256, 512, 1024, 2048] and large.num_heads == [8, 16, 32, 64]


def test_florence2_language_models_are_bart_base_and_bart_large_sized():
    """Large's BART is `BartConfig()`'s (bart-large) shape; base's is bart-base's (6+6 layers, 768 wide)."""
    base, large = mf.load_preset("florence2-base").text_config, mf.load_preset("florence2-large").text_config
    assert {name: getattr(large, name) for name in BART_SIZES} == {name: getattr(BartConfig(), name)
                                                                   for name in BART_SIZES}
    assert [getattr(base, name) for name in BART_SIZES] == [768, 6, 6, 12, 12, 3072, 3072, 1024]
    for text in (base, large):
        assert text.model_type == "bart" and text.activation_function == "gelu" and not text.scale_embedding
        assert (text.bos_token_id, text.pad_token_id, text.eos_token_id, text.decoder_start_token_id) == (0, 1, 2, 2)


@pytest.mark.parametrize("name", FLORENCE2)
def test_florence2_vocabulary_is_the_converted_checkpoints(name):
    """`<image>` appended after the original 51,289 tokens (Transformers' `Florence2Config` default id), then the
    vocabulary padded to a multiple of 64, as Transformers' converter (`resize_token_embeddings(.., 64)`) leaves it."""
    config = mf.load_preset(name)
    assert config.image_token_id == Florence2Config().image_token_id == 51289
    assert config.text_config.vocab_size == math.ceil((config.image_token_id + 1) / 64) * 64 == 51328


@pytest.mark.parametrize("name", FLORENCE2)
def test_florence2_presets_have_the_papers_sizes_and_transformers_layout(name):
    config = mf.load_preset(name)
    reference = Florence2Config(vision_config=config.vision_config.to_dict(), text_config=config.text_config.to_dict(),
                                image_token_id=config.image_token_id)
    with torch.device("meta"):
        ours, theirs = FlorenceForConditionalGeneration(config), Florence2ForConditionalGeneration(reference)
    shapes = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert shapes == {key: tuple(value.shape) for key, value in theirs.state_dict().items()}
    assert count(ours) == count(theirs) == PARAMETERS[name]
    assert round(count(ours) / 1e9, 2) == PAPER_BILLIONS[name]


def test_florence_generation_tiny_is_the_model_make_demo_generation_builds(tmp_path):
    """`build_generation_model` on a `florence-tiny` folder with the generation tokenizer and stages 3-4 (what
    `examples/finetune_generation.py --base` does) gives the preset's config and parameter count."""
    mf.FlorenceModel(mf.load_preset("florence-tiny")).save_pretrained(tmp_path)
    tokenizer = mf.FlorenceGenerationTokenizer.from_defaults()
    built = build_generation_model(str(tmp_path), tokenizer, vision_feature_stages=[3, 4])
    preset = mf.load_preset("florence-generation-tiny")
    assert {key: getattr(preset.text_config, key) for key in TINY_TEXT_CONFIG} == TINY_TEXT_CONFIG
    assert preset.vision_config.to_dict() == mf.load_preset("florence-tiny").vision_config.to_dict()
    assert without_provenance(built.config.to_dict()) == without_provenance(preset.to_dict())
    with torch.device("meta"):
        assert count(FlorenceForConditionalGeneration(preset)) == count(built)
