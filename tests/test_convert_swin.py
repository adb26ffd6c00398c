"""`conversion/convert_swin.py`: the architecture read from the blocks present is printed and checked against what
the checkpoint claims (its metadata, `--config`, Swin's window / shifted-window pairs); Swin V2 is refused by name."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import Swinv2Config, Swinv2Model

from conversion.convert_swin import convert_swin, main

TINY = dict(embed_dim=16, depths=(2, 4), num_heads=(1, 2), window_size=4, img_size=32, num_classes=0)


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **TINY).eval().state_dict()


def without(weights, *prefixes):
    return {k: v for k, v in weights.items() if not k.startswith(prefixes)}


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
