"""Tests of `modeling_florence/training_florence_detection.py`."""

import json


def test_finetune_script_trains_evaluates_saves_and_resumes(tmp_path):
    """examples/finetune_detection.py on Trainer: a 2-step closed-set run from random weights writes the detector,
    its processor, COCO metrics, a model card and predictions.png; a resumed run continues from the checkpoint."""
    from tests.conftest import run_example

    common = ["--output", str(tmp_path), "--num-train", "8", "--num-eval", "4", "--image-size", "64",
              "--per_device_train_batch_size", "4", "--save_steps", "1"]
    run_example("finetune_detection.py", *common, "--max_steps", "2")
    metrics = json.loads((tmp_path / "eval_results.json").read_text())
    assert {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"} <= set(metrics)
    for name in ("model.safetensors", "preprocessor_config.json", "eval_results.json", "README.md", "predictions.png"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["FlorenceForObjectDetection"]
    run_example("finetune_detection.py", *common, "--max-steps", "3", "--resume-from-checkpoint", "latest")
    assert (tmp_path / "checkpoint-3").is_dir()
