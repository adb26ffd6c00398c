"""Tests of `conversion/checkpoint_io.py`."""

import pytest
import timm
import torch

from conversion.convert_swin import main as convert_swin_main


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


def test_converters_exit_non_zero_when_they_wrote_nothing(tmp_path, timm_swin_checkpoint):
    _, path = timm_swin_checkpoint
    (tmp_path / "taken").write_text("a file where the output folder should go")
    with pytest.raises(SystemExit, match="nothing was written") as exited:
        convert_swin_main(["--checkpoint", str(path), "--output", str(tmp_path / "taken")])
    assert exited.value.code != 0
