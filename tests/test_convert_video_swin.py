"""`conversion/convert_video_swin.py`: depth checked against the checkpoint's claims (mmaction's config text,
`--config`, paired blocks), the architecture printed, and a video processor written so the pipeline loads the folder."""

import numpy as np
import pytest
import torch
from transformers import AutoVideoProcessor, pipeline

from conversion.convert_video_swin import convert, main
from modeling_florence import FlorenceVideoProcessor
from tests.conftest import write_video
from florence_testing import tiny_torchvision_swin3d


@pytest.fixture(scope="module")
def weights():
    return tiny_torchvision_swin3d().state_dict()  # depths [2, 2, 2, 2], 5 classes


def test_a_checkpoint_missing_its_last_block_is_refused(weights, tmp_path, capsys):
    short = {k: v for k, v in weights.items() if not k.startswith("features.6.1.")}
    with pytest.raises(ValueError, match=r"Inconsistent depths \[2, 2, 2, 1\]: Swin blocks come in pairs"):
        convert(short)
    assert "Video Swin architecture read from the weights: embed_dim=12, depths=[2, 2, 2, 1]" in capsys.readouterr().out
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(SystemExit, match="error: Inconsistent depths") as exited:
        main(["--checkpoint", str(tmp_path / "short.pth"), "--output", str(tmp_path / "out")])
    assert exited.value.code != 0 and not (tmp_path / "out").exists()
    gap = {k: v for k, v in weights.items() if not k.startswith("features.2.0.")}
    with pytest.raises(ValueError, match=r"no block of stage 1 numbered \[0\]"):
        convert(gap)


def test_metadata_and_config_claims_are_checked(weights, tmp_path):
    meta = {"config": "model = dict(backbone=dict(type='SwinTransformer3D', patch_size=(2, 4, 4), embed_dim=12, "
                      "depths=[2, 2, 4, 2], num_heads=[1, 2, 2, 4], window_size=(8, 7, 7)))"}
    torch.save({"state_dict": weights, "meta": meta}, tmp_path / "mmaction.pth")
    with pytest.raises(SystemExit, match=r"Inconsistent depths: .* give \[2, 2, 2, 2\] but .*mmaction\.pth's metadata "
                                         r"declares \[2, 2, 4, 2\]"):
        main(["--checkpoint", str(tmp_path / "mmaction.pth"), "--output", str(tmp_path / "a")])
    torch.save(weights, tmp_path / "plain.pth")
    with pytest.raises(SystemExit, match=r"Inconsistent embed_dim: .* give 12 but --config declares 96"):
        main(["--checkpoint", str(tmp_path / "plain.pth"), "--output", str(tmp_path / "b"), "--config", "swin-t"])


def test_the_converted_folder_has_a_video_processor_and_runs_in_the_pipeline(weights, tmp_path):
    torch.save(weights, tmp_path / "swin3d.pth")
    main(["--checkpoint", str(tmp_path / "swin3d.pth"), "--output", str(tmp_path / "out"), "--num-frames", "4"])
    processor = AutoVideoProcessor.from_pretrained(tmp_path / "out")
    assert isinstance(processor, FlorenceVideoProcessor) and processor.num_frames == 4
    np.testing.assert_allclose(processor.image_mean, [0.485, 0.456, 0.406])
    write_video(tmp_path / "clip.mp4")
    predictions = pipeline("video-classification", model=str(tmp_path / "out"))(str(tmp_path / "clip.mp4"), top_k=5)
    assert len(predictions) == 5 and abs(sum(p["score"] for p in predictions) - 1) < 1e-4
