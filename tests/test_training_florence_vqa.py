"""Tests of `modeling_florence/training_florence_vqa.py`."""

import pytest
import torch
from PIL import Image

import modeling_florence as mf
from tests.test_common import tiny_text_config, tiny_vision_config

from florence_testing import build


# ----------------------------------------------------------------------------------------------------------------------
# It learns
# ----------------------------------------------------------------------------------------------------------------------
def test_a_tiny_model_learns_to_answer_from_the_image():
    """Colour questions about one shape, where only the image tells the answer: a tiny VQA model fits them."""
    vocabulary = ["red", "blue", "green"]
    processor = mf.FlorenceVQAProcessor.from_defaults(image_size=32, answer_vocabulary=vocabulary)
    colours = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60)}
    names = list(colours) * 4
    pictures = [Image.new("RGB", (32, 32), colours[name]) for name in names]
    batch = processor(text=["what colour is the image?"] * len(names), images=pictures,
                      answers=[[name] * 10 for name in names])
    model = build(num_labels=3).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        predicted = [r[0]["answer"] for r in processor.post_process_vqa(model(**batch))]
    assert predicted == names


def test_finetune_optimizer_scales_each_tower_and_skips_decay_on_norms_and_biases():
    from modeling_florence.training_florence_vqa import optimizer_for

    model = build(num_labels=5)
    lr = {}
    for image_scale, expected_image in ((None, 0.3), (2.0, 2.0)):
        optimizer = optimizer_for(model, 1e-3, 0.3, image_scale)
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                lr[id(parameter)] = (group["lr"], group["weight_decay"])
        for name, parameter in model.named_parameters():
            scale = expected_image if name.startswith("vision_model.") else 0.3 if name.startswith("text_model.") else 1
            decay = 0.01 if parameter.ndim > 1 and "embedding" not in name else 0.0
            assert lr[id(parameter)] == (pytest.approx(1e-3 * scale), decay), name
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("freeze", [False, True])
def test_finetune_script_trains_evaluates_and_saves(tmp_path, freeze):
    """examples/finetune_vqa.py on Trainer, from a (tiny, 4-stage) pretrained Florence folder with the preset's
    fusion (stages 3 + 4, positions): trains, evaluates per question type next to the blind baseline, saves a folder
    that answers questions; with `--freeze-image-tower` the cached multi-stage features train the same model."""
    import json

    from tests.conftest import run_example

    torch.manual_seed(0)
    vision = tiny_vision_config(depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4]).to_dict()
    mf.FlorenceModel(mf.FlorenceConfig(vision_config=vision, text_config=tiny_text_config().to_dict(),
                                       projection_dim=24)).save_pretrained(tmp_path / "florence")
    output = tmp_path / "vqa"
    argv = ["--florence", str(tmp_path / "florence"), "--output", str(output), "--num-train", "40", "--num-test", "20",
            "--steps", "2", "--batch-size", "8", "--image-size", "32", "--shapes-image-size", "48"]
    run_example("finetune_vqa.py", *argv, *(["--freeze-image-tower"] if freeze else []))
    results = json.loads((output / "eval_results.json").read_text())
    kinds = {"colour", "count", "existence", "position", "shape"}
    assert {f"accuracy_{kind}" for kind in kinds} <= set(results["vqa"]) and "accuracy" in results["blind_baseline"]
    model = mf.FlorenceForVQA.from_pretrained(output).eval()
    assert model.config.vision_feature_stages == [3, 4] and model.config.image_position_embeddings
    processor = mf.FlorenceVQAProcessor.from_pretrained(output)
    inputs = processor(text=["what colour is the circle?"], images=[Image.new("RGB", (48, 48), "red")])
    with torch.no_grad():
        answer = processor.post_process_vqa(model(**inputs), top_k=1)[0][0]["answer"]
    assert answer in model.config.answers
