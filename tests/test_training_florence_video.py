"""Tests of `modeling_florence/training_florence_video.py`."""

import torch
from transformers import pipeline

from modeling_florence import FlorenceProcessor


def test_finetune_video_script_runs_with_multi_view_evaluation(tmp_path):
    """examples/finetune_video.py end to end on a few Shapes videos from random weights: Trainer fine-tuning, 2 clips x
    3 crops per held-out video, a pipeline-ready folder and eval_results.json."""
    import json

    from tests.conftest import run_example

    run_example("finetune_video.py", "--image-model", "none", "--output", str(tmp_path), "--num-train", "14",
                "--num-test", "7", "--image-size", "32", "--resize", "36", "--batch-size", "7", "--video-text-epochs",
                "1", "--classification-epochs", "1", "--threads", "1")
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["eval_views"] == 6.0 and 0 <= results["top1"] <= 100 and 0 <= results["single_view_top1"] <= 100
    assert FlorenceProcessor.from_pretrained(tmp_path).video_processor.frame_stride == 1
    scores = pipeline("video-classification", model=str(tmp_path))(torch.randint(0, 255, (16, 32, 32, 3)).numpy())
    assert len(scores) == 5
