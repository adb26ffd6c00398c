"""`conversion/export_for_hub.py` on the folders the project writes without a tokenizer: an image classifier saved as
`finetune_classification.py` saves it (model + image processor) and a converted Video Swin (model + video processor)
export, and load with their pipelines on a machine without the package."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

import modeling_florence as mf
from tests.conftest import write_video
from tests.test_common import TESTERS, build
from tests.test_hub_export import IMAGE_SIZE, REMOTE_LOAD, assert_same_predictions, export_main
from tests.test_video_model import tiny_torchvision_swin3d


def run_remote(hub, tmp_path, cls, processing: dict, pipelines: list, auto_class: str) -> dict:
    inputs = TESTERS[cls.__name__].make_inputs(2)
    (tmp_path / "inputs.json").write_text(json.dumps({k: v.tolist() for k, v in inputs.items()}))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(hub), str(tmp_path / "inputs.json"), json.dumps(pipelines),
         json.dumps(sorted(processing)), auto_class, str(tmp_path / "clip.mp4")],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.split("RESULT", 1)[1])
    assert remote["processing"] == processing
    return remote


def test_an_image_classifier_saved_with_its_image_processor_alone_exports(tmp_path):
    model = build(mf.FlorenceForImageClassification)
    model.save_pretrained(tmp_path / "model")
    size = {"shortest_edge": IMAGE_SIZE}
    mf.FlorenceImageProcessor(size=size, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(
        tmp_path / "model")  # what run_classification writes: no tokenizer
    assert export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub")]) == 0
    assert not (tmp_path / "hub" / "tokenizer.json").exists()
    pipelines = [("image-classification", {}, "image")]
    processing = {"AutoProcessor": "FlorenceImageProcessor", "AutoImageProcessor": "FlorenceImageProcessor"}
    remote = run_remote(tmp_path / "hub", tmp_path, mf.FlorenceForImageClassification, processing, pipelines,
                        "AutoModelForImageClassification")
    image = Image.fromarray(np.full((40, 56, 3), 200, np.uint8))
    assert_same_predictions(remote["pipelines"][0], pipeline("image-classification", model=str(tmp_path / "model"))(image))


def test_a_converted_video_swin_exports_with_its_video_processor(tmp_path):
    from conversion.convert_video_swin import main as convert_main

    torch.save(tiny_torchvision_swin3d().state_dict(), tmp_path / "swin3d.pth")
    convert_main(["--checkpoint", str(tmp_path / "swin3d.pth"), "--output", str(tmp_path / "model"),
                  "--num-frames", "4"])
    assert export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub")]) == 0
    write_video(tmp_path / "clip.mp4", frames=8)
    remote = run_remote(tmp_path / "hub", tmp_path, mf.FlorenceForVideoClassification,
                        {"AutoVideoProcessor": "FlorenceVideoProcessor"}, [("video-classification", {}, "video")],
                        "AutoModelForVideoClassification")
    local = pipeline("video-classification", model=str(tmp_path / "model"))(str(tmp_path / "clip.mp4"))
    assert_same_predictions(remote["pipelines"][0], local)


def test_a_folder_without_the_tokenizer_its_model_needs_is_refused_by_name(tmp_path):
    model = build(mf.FlorenceModel)
    model.save_pretrained(tmp_path / "model")
    mf.FlorenceImageProcessor().save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"holds no tokenizer files .* FlorenceModel can use alone: save the model "
                                         r"with its processor \(with the tokenizer\)"):
        export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub")])
