"""Conversion parity: converted Florence towers reproduce the peers' own implementations on random weights."""

import pytest
from safetensors.torch import load_file, save_file
import timm
import torch
from transformers import CLIPTextConfig, CLIPTextModel, SwinConfig, SwinModel

from conversion.convert_clip_text import convert_clip_text
from conversion.convert_clip_text import main as convert_clip_text_main
from conversion.convert_swin import convert_swin
from conversion.convert_swin import main as convert_swin_main
from modeling_florence import FlorenceTextModel, FlorenceVisionModel


def randomize_(module: torch.nn.Module) -> torch.nn.Module:
    """Make norms, biases and bias tables non-trivial so a wrong mapping cannot hide behind identity init."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias") or "bias_table" in name or "norm" in name:
                noise = torch.randn(parameter.shape, generator=generator) * 0.2
                parameter.copy_(noise + (1.0 if name.endswith("weight") else 0.0))
    return module


@pytest.fixture(scope="module")
def timm_swin_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)).eval()
    path = tmp_path_factory.mktemp("timm") / "swin_tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize("size", [(224, 224), (224, 448)])
def test_swin_from_timm_matches_forward_features(timm_swin_checkpoint, size):
    reference, path = timm_swin_checkpoint
    if size != (224, 224):  # timm bakes the resolution in at creation; same weights, other size
        reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=size).eval()
        reference.load_state_dict(torch.load(path, weights_only=True), strict=False)
    model = convert_swin(path)
    assert model.config.patch_embed == "linear" and model.config.downsample == "merge"
    assert (model.config.embed_dim, model.config.depths, model.config.num_heads) == (96, [2, 2, 6, 2], [3, 6, 12, 24])
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = reference.forward_features(pixel_values).flatten(1, 2)
        actual = model(pixel_values).last_hidden_state
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_swin_official_layout_and_cli(timm_swin_checkpoint, tmp_path):
    """Official Swin/UniCL checkpoints downsample at the end of a stage and wrap weights in {"model": ...}."""
    reference, path = timm_swin_checkpoint
    official = {}
    for key, value in torch.load(path, weights_only=True).items():
        if ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.downsample", f"layers.{stage - 1}.downsample")
        official["image_encoder." + key] = value
    official_path = tmp_path / "unicl.pth"
    torch.save({"model": official}, official_path)
    convert_swin_main(["--checkpoint", str(official_path), "--output", str(tmp_path / "out")])
    assert "base_model: " + official_path.name in (tmp_path / "out" / "README.md").read_text()
    model = FlorenceVisionModel.from_pretrained(tmp_path / "out").eval()
    pixel_values = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values).last_hidden_state,
            reference.forward_features(pixel_values).flatten(1, 2),
            atol=1e-4,
            rtol=0,
        )


@pytest.mark.parametrize("size", [(224, 224), (250, 330)])
def test_swin_from_transformers_matches_swin_model(tmp_path, size):
    """Transformers' SwinModel pads non-window-multiple maps like the official code; we must match it exactly."""
    torch.manual_seed(0)
    config = SwinConfig(embed_dim=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24], window_size=7)
    reference = randomize_(SwinModel(config)).eval()
    reference.save_pretrained(tmp_path / "hf")
    model = convert_swin(tmp_path / "hf")
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected, actual = reference(pixel_values), model(pixel_values)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)


def test_swin_conversion_rejects_other_formats(tmp_path, timm_swin_checkpoint):
    _, path = timm_swin_checkpoint
    with pytest.raises(ValueError, match="looks like the 'timm' format"):
        convert_swin(path, source_format="transformers")
    bogus = tmp_path / "bogus.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bogus)
    with pytest.raises(ValueError, match="Not a Swin checkpoint"):
        convert_swin(bogus)
    truncated = tmp_path / "truncated.pth"
    weights = torch.load(path, weights_only=True)
    weights.pop("layers.2.blocks.3.mlp.fc2.weight")
    torch.save(weights, truncated)
    with pytest.raises(ValueError, match="missing"):
        convert_swin(truncated)


def tokens(batch=3, length=12, vocab=1000, eos=999):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, vocab - 2, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row, end in enumerate([length - 1, 6, 3][:batch]):
        input_ids[row, end] = eos
        input_ids[row, end + 1 :] = 0
        attention_mask[row, end + 1 :] = 0
    return input_ids, attention_mask


def test_clip_text_from_transformers_matches(tmp_path):
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=20, eos_token_id=999, bos_token_id=998, pad_token_id=0,
    )
    reference = randomize_(CLIPTextModel(config)).eval()
    reference.save_pretrained(tmp_path / "clip")
    convert_clip_text_main(["--checkpoint", str(tmp_path / "clip"), "--output", str(tmp_path / "out")])
    model = FlorenceTextModel.from_pretrained(tmp_path / "out").eval()
    assert model.config.num_attention_heads == 4 and model.config.hidden_act == "quick_gelu"
    input_ids, attention_mask = tokens()
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        actual = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)
    for ours, theirs in zip(actual.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_clip_text_from_open_clip_matches(tmp_path):
    from open_clip.transformer import TextTransformer

    torch.manual_seed(0)
    reference = TextTransformer(context_length=20, vocab_size=1000, width=64, heads=4, layers=2, output_dim=32)
    reference = randomize_(reference).eval()  # open_clip's default activation here is nn.GELU
    torch.save(reference.state_dict(), tmp_path / "open_clip.pt")
    model = convert_clip_text(tmp_path / "open_clip.pt", hidden_act="gelu", num_attention_heads=4, eos_token_id=999)
    input_ids, _ = tokens(length=20)  # open_clip always runs the full context
    with torch.no_grad():
        expected = reference(input_ids)
        actual = model(input_ids=input_ids).pooler_output @ reference.text_projection
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def swin_variant(tmp_path, path, name, edit) -> str:
    weights = torch.load(path, weights_only=True)
    edit(weights)
    torch.save(weights, tmp_path / name)
    return str(tmp_path / name)


def test_swin_conversion_refuses_missing_blocks_and_inconsistent_heads(tmp_path, timm_swin_checkpoint):
    _, path = timm_swin_checkpoint

    def drop(prefix):
        return lambda weights: [weights.pop(key) for key in [k for k in weights if k.startswith(prefix)]]

    def fewer_heads(weights):
        weights["layers.2.blocks.1.attn.relative_position_bias_table"] = torch.zeros(169, 6)

    cases = {"gap.pth": (drop("layers.2.blocks.3."), r"no block of stage 2 numbered \[3\]"),
             "three-stages.pth": (drop("layers.3."), r"final norm is 768 wide but the 3 stages found end at 384"),
             "heads.pth": (fewer_heads, r"Inconsistent head counts in stage 2: .*1: 6")}
    for name, (edit, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            convert_swin(swin_variant(tmp_path, path, name, edit))
    # The command line exits non-zero with the reason, and writes nothing.
    with pytest.raises(SystemExit, match=r"error: .*no block of stage 2") as exited:
        convert_swin_main(["--checkpoint", str(tmp_path / "gap.pth"), "--output", str(tmp_path / "out")])
    assert exited.value.code != 0 and not (tmp_path / "out").exists()


def test_swin_folder_whose_config_disagrees_with_its_weights_is_refused(tmp_path):
    import json

    config = SwinConfig(embed_dim=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24], window_size=7)
    SwinModel(config).save_pretrained(tmp_path / "hf")
    declared = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**declared, "num_heads": [3, 6, 12, 12]}))
    with pytest.raises(ValueError, match=r"Inconsistent num_heads: the weights .* give \[3, 6, 12, 24\]"):
        convert_swin(tmp_path / "hf")


def test_converters_exit_non_zero_when_they_wrote_nothing(tmp_path, timm_swin_checkpoint):
    _, path = timm_swin_checkpoint
    (tmp_path / "taken").write_text("a file where the output folder should go")
    with pytest.raises(SystemExit, match="nothing was written") as exited:
        convert_swin_main(["--checkpoint", str(path), "--output", str(tmp_path / "taken")])
    assert exited.value.code != 0


def test_clip_text_conversion_refuses_missing_layers_and_inconsistent_heads(tmp_path):
    import json

    config = CLIPTextConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=20, eos_token_id=999, bos_token_id=998)
    CLIPTextModel(config).save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match=r"Inconsistent num_attention_heads: .* give 2 .* declares 4"):
        convert_clip_text(tmp_path / "clip", num_attention_heads=2)
    weights = load_file(tmp_path / "clip" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".layers.2." not in k}, tmp_path / "clip" / "model.safetensors")
    with pytest.raises(ValueError, match=r"Inconsistent num_hidden_layers: .* give 2 .* declares 3"):
        convert_clip_text(tmp_path / "clip")
    save_file({k: v for k, v in weights.items() if ".layers.1." not in k}, tmp_path / "gap.safetensors")
    with pytest.raises(ValueError, match=r"no layer \[1\] \(found \[0, 2\]\)"):
        convert_clip_text(tmp_path / "gap.safetensors")
    with pytest.raises(SystemExit) as exited:
        convert_clip_text_main(["--checkpoint", str(tmp_path / "gap.safetensors"), "--output", str(tmp_path / "o")])
    assert exited.value.code != 0 and not (tmp_path / "o").exists()
    assert json.loads((tmp_path / "clip" / "config.json").read_text())["num_hidden_layers"] == 3
