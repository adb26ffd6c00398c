"""Tests of `conversion/convert_swin.py`."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import Swinv2Config, Swinv2Model, SwinConfig, SwinModel

from conversion.convert_swin import convert_swin, main, main as convert_swin_main
from modeling_florence import FlorenceVisionModel
from florence_testing import randomize_


TINY = dict(embed_dim=16, depths=(2, 4), num_heads=(1, 2), window_size=4, img_size=32, num_classes=0)


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **TINY).eval().state_dict()


def without(weights, *prefixes):
    return {k: v for k, v in weights.items() if not k.startswith(prefixes)}


def swin_variant(tmp_path, path, name, edit) -> str:
    weights = torch.load(path, weights_only=True)
    edit(weights)
    torch.save(weights, tmp_path / name)
    return str(tmp_path / name)


def test_a_checkpoint_missing_its_last_block_is_refused_and_its_architecture_printed(weights, tmp_path, capsys):
    torch.save(without(weights, "layers.1.blocks.3."), tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"Inconsistent depths \[2, 3\]: Swin blocks come in pairs.*stage\(s\) \[1\]"):
        convert_swin(tmp_path / "short.pth")
    assert "architecture read from the weights: embed_dim=16, depths=[2, 3], num_heads=[1, 2]" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="error: Inconsistent depths") as exited:
        main(["--checkpoint", str(tmp_path / "short.pth"), "--output", str(tmp_path / "out")])
    assert exited.value.code != 0 and not (tmp_path / "out").exists()
    # A source model that really has odd depths converts when the user says so.
    main(["--checkpoint", str(tmp_path / "short.pth"), "--output", str(tmp_path / "odd"), "--unpaired-blocks"])
    assert json.loads((tmp_path / "odd" / "config.json").read_text())["depths"] == [2, 3]


def test_the_checkpoints_metadata_is_checked(weights, tmp_path, capsys):
    """Missing the last *pair* keeps the depths even: only what the checkpoint states about itself can tell."""
    short = without(weights, "layers.1.blocks.2.", "layers.1.blocks.3.")
    mmdet_meta = {"config": "model = dict(backbone=dict(type='SwinTransformer', embed_dims=16, depths=[2, 4], "
                            "num_heads=[1, 2], window_size=4))"}
    torch.save({"state_dict": short, "meta": mmdet_meta}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match=r"Inconsistent depths: the weights \(and flags\) give \[2, 2\] but .*meta\.pth's "
                                         r"metadata declares \[2, 4\]"):
        convert_swin(tmp_path / "meta.pth")
    save_file(short, tmp_path / "meta.safetensors", metadata={"depths": "[2, 4]"})
    with pytest.raises(ValueError, match=r"Inconsistent depths: .* give \[2, 2\] .* declares \[2, 4\]"):
        convert_swin(tmp_path / "meta.safetensors")
    torch.save({"state_dict": weights, "meta": mmdet_meta}, tmp_path / "full.pth")
    assert convert_swin(tmp_path / "full.pth").config.depths == [2, 4]
    assert "depths=[2, 4]" in capsys.readouterr().out


def test_config_flag_names_the_architecture_to_expect(weights, tmp_path):
    torch.save(weights, tmp_path / "swin.pth")
    with pytest.raises(SystemExit, match=r"Inconsistent embed_dim: .* give 16 but --config declares 96"):
        main(["--checkpoint", str(tmp_path / "swin.pth"), "--output", str(tmp_path / "a"), "--config", "swin-t"])
    (tmp_path / "expected.json").write_text(json.dumps({"embed_dim": 16, "depths": [2, 6], "num_heads": [1, 2]}))
    with pytest.raises(SystemExit, match=r"Inconsistent depths: .* give \[2, 4\] but --config declares \[2, 6\]"):
        main(["--checkpoint", str(tmp_path / "swin.pth"), "--output", str(tmp_path / "b"),
              "--config", str(tmp_path / "expected.json")])
    with pytest.raises(SystemExit, match="Unknown preset 'swin-q'"):
        main(["--checkpoint", str(tmp_path / "swin.pth"), "--output", str(tmp_path / "c"), "--config", "swin-q"])
    (tmp_path / "expected.json").write_text(json.dumps({"embed_dim": 16, "depths": [2, 4], "num_heads": [1, 2]}))
    main(["--checkpoint", str(tmp_path / "swin.pth"), "--output", str(tmp_path / "d"),
          "--config", str(tmp_path / "expected.json")])
    assert (tmp_path / "d" / "model.safetensors").is_file()


@pytest.mark.parametrize("source", ["timm", "transformers"])
def test_swin_v2_is_refused_by_name(source, tmp_path):
    if source == "timm":
        model = timm.create_model("swinv2_tiny_window8_256", pretrained=False, embed_dim=16, depths=(2, 2),
                                  num_heads=(1, 2), window_size=4, img_size=32, num_classes=0)
        torch.save(model.state_dict(), tmp_path / "v2.pth")
        path = tmp_path / "v2.pth"
    else:
        Swinv2Model(Swinv2Config(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4,
                                 image_size=32)).save_pretrained(tmp_path / "v2")
        path = tmp_path / "v2"
    with pytest.raises(ValueError, match=r"Swin Transformer V2 checkpoint .*continuous position bias.*Swin V1"):
        convert_swin(path)


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
