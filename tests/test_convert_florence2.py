"""conversion/convert_florence2.py on a fake checkpoint in the original `microsoft/Florence-2-*` remote-code layout
(names and shapes of its `modeling_florence2.py`): values land one-to-one, leftovers and missing keys are refused."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import Florence2ForConditionalGeneration

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from conversion.convert_florence2 import convert, main  # noqa: E402
from modeling_florence import FlorenceForConditionalGeneration  # noqa: E402

VOCAB, D_MODEL = 120, 32
ORIGINAL_CONFIG = {
    "model_type": "florence2",
    "vision_config": {
        "model_type": "davit", "dim_embed": [16, 32], "num_heads": [2, 4], "num_groups": [2, 4], "depths": [1, 2],
        "window_size": 2, "patch_size": [7, 3], "patch_stride": [4, 2], "patch_padding": [3, 1],
        "patch_prenorm": [False, True], "projection_dim": D_MODEL, "drop_path_rate": 0.1,
        "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 50},
        "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 100},
        "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
    },
    "text_config": {
        "model_type": "florence2_language", "vocab_size": VOCAB, "d_model": D_MODEL, "encoder_layers": 1,
        "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 48,
        "decoder_ffn_dim": 48, "max_position_embeddings": 64, "bos_token_id": 0, "eos_token_id": 2,
        "pad_token_id": 1, "decoder_start_token_id": 2, "architectures": ["Florence2LanguageForConditionalGeneration"],
    },
}
# Transformers' block names -> the remote code's (written out here, independently of the converter's regexes).
BLOCK_NAMES = {
    "conv1": "conv1.fn.dw", "conv2": "conv2.fn.dw", "spatial_block.norm1": "spatial_block.window_attn.norm",
    "channel_block.norm1": "channel_block.channel_attn.norm", "window_attn.qkv": "window_attn.fn.qkv",
    "window_attn.proj": "window_attn.fn.proj", "channel_attn.qkv": "channel_attn.fn.qkv",
    "channel_attn.proj": "channel_attn.fn.proj", "norm2": "ffn.norm", "ffn.fc1": "ffn.fn.net.fc1",
    "ffn.fc2": "ffn.fn.net.fc2",
}


def original_name(key: str) -> str:
    """The remote-code name of one of our (Transformers') keys."""
    if key.startswith("model.vision_tower.convs."):
        return key.replace("model.", "", 1).replace(".conv.", ".proj.")
    if key.startswith("model.vision_tower.blocks."):
        stage, block, rest = re.match(r"model\.vision_tower\.blocks\.(\d+)\.(\d+)\.(.*)", key).groups()
        for ours, theirs in BLOCK_NAMES.items():
            if ours in rest:
                rest = rest.replace(ours, theirs)
                break
        return f"vision_tower.blocks.{stage}.{block}.{rest}"
    if key == "model.multi_modal_projector.image_projection.weight":
        return "image_projection"
    if key.startswith("model.multi_modal_projector."):
        return key.replace("model.multi_modal_projector.", "").replace("image_position_embed", "image_pos_embed")
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    return key.replace("model.language_model.", "language_model.model.")


def fake_original_checkpoint(seed=0) -> tuple[dict, dict]:
    """Random tensors under the original names and shapes (vocabulary without `<image>`, projection [in, out]), the
    DaViT's unused classifier norm, and BART's zero logits bias; plus the map original key -> our key."""
    reference = convert.__globals__["convert_config"](ORIGINAL_CONFIG)
    ours = FlorenceForConditionalGeneration(reference).state_dict()
    generator = torch.Generator().manual_seed(seed)
    original, names = {}, {}
    for key, value in ours.items():
        shape = list(value.shape)
        if key.endswith(("shared.weight", "embed_tokens.weight")) or key == "lm_head.weight":
            shape[0] = VOCAB
        if key == "model.multi_modal_projector.image_projection.weight":
            shape = shape[::-1]
        name = original_name(key)
        tied = next((original[n] for n, k in names.items() if k.endswith("shared.weight")), None)
        is_embedding = key.endswith(("embed_tokens.weight", "lm_head.weight"))  # tied to `shared` in the remote code
        original[name] = tied if is_embedding and tied is not None else torch.randn(shape, generator=generator)
        names[name] = key
    original["vision_tower.norms.weight"] = torch.ones(32)
    original["language_model.final_logits_bias"] = torch.zeros(1, VOCAB)
    return original, names


def test_every_original_value_lands_one_to_one():
    original, names = fake_original_checkpoint()
    assert "vision_tower.blocks.1.1.channel_block.channel_attn.fn.qkv.weight" in original
    assert "vision_tower.blocks.0.0.spatial_block.ffn.fn.net.fc2.bias" in original
    model = convert(original, ORIGINAL_CONFIG)
    state = model.state_dict()
    assert model.config.image_token_id == VOCAB and model.config.text_config.vocab_size == 128
    for name, key in names.items():
        value = original[name]
        if name == "image_projection":
            torch.testing.assert_close(state[key], value.t(), atol=0, rtol=0)
        elif value.shape != state[key].shape:  # embeddings: the original rows, then the mean row for <image> + pad
            torch.testing.assert_close(state[key][:VOCAB], value, atol=0, rtol=0)
            torch.testing.assert_close(state[key][VOCAB:], value.mean(0).expand(128 - VOCAB, -1))
        else:
            torch.testing.assert_close(state[key], value, atol=0, rtol=0, msg=name)


def test_leftover_and_missing_keys_are_refused_by_name():
    original, _ = fake_original_checkpoint()
    extra = dict(original, **{"vision_tower.blocks.0.0.spatial_block.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"leftovers.*spatial_block\.extra\.weight"):
        convert(extra, ORIGINAL_CONFIG)
    missing = {k: v for k, v in original.items() if k != "vision_tower.blocks.0.0.channel_block.ffn.fn.net.fc1.bias"}
    with pytest.raises(ValueError, match=r"missing.*channel_block\.ffn\.fc1\.bias"):
        convert(missing, ORIGINAL_CONFIG)
    untied = dict(original, **{"language_model.lm_head.weight": torch.zeros(VOCAB, D_MODEL)})
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        convert(untied, ORIGINAL_CONFIG)
    biased = dict(original, **{"language_model.final_logits_bias": torch.ones(1, VOCAB)})
    with pytest.raises(ValueError, match="final_logits_bias"):
        convert(biased, ORIGINAL_CONFIG)


def test_command_line_writes_a_folder_transformers_loads(tmp_path):
    original, _ = fake_original_checkpoint()
    source = tmp_path / "Florence-2-fake"
    source.mkdir()
    save_file({k: v.clone() for k, v in original.items()}, source / "model.safetensors")
    (source / "config.json").write_text(json.dumps(ORIGINAL_CONFIG))
    main(["--checkpoint", str(source), "--output", str(tmp_path / "out")])
    ours = FlorenceForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    theirs = Florence2ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    pixels = torch.randn(1, 3, 32, 32)
    ids = torch.cat([torch.full((1, ours.num_image_tokens(32, 32)), VOCAB), torch.tensor([[0, 5, 6, 2]])], dim=1)
    with torch.no_grad():
        a = ours(input_ids=ids, pixel_values=pixels, decoder_input_ids=ids[:, -3:]).logits
        b = theirs(input_ids=ids, pixel_values=pixels, decoder_input_ids=ids[:, -3:]).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit, match="config.json"):
        (source / "config.json").unlink()
        main(["--checkpoint", str(source), "--output", str(tmp_path / "out2")])
