"""Tests of `conversion/checkpoint_io.py`."""

import pytest

from conversion.convert_swin import main as convert_swin_main


def test_converters_exit_non_zero_when_they_wrote_nothing(tmp_path, timm_swin_checkpoint):
    _, path = timm_swin_checkpoint
    (tmp_path / "taken").write_text("a file where the output folder should go")
    with pytest.raises(SystemExit, match="nothing was written") as exited:
        convert_swin_main(["--checkpoint", str(path), "--output", str(tmp_path / "taken")])
    assert exited.value.code != 0
