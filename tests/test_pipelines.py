"""Transformers' pipelines on saved Florence folders: every task the package registers runs without an error or a
warning in the log (the pipelines' "model not supported" check passes for our classes), and detection pipelines
return boxes inside the image."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline
from transformers.utils import logging as transformers_logging

import modeling_florence as mf
from tests.test_common import tiny_detection_config, tiny_florence_config, tiny_text_config, tiny_vision_config

WIDTH, HEIGHT = 230, 150  # non-square, as a user's photo


@pytest.fixture
def log_records(caplog):
    """Records at WARNING and above from every logger, Transformers' included (it does not propagate by default)."""
    transformers_logging.enable_propagation()
    caplog.set_level(logging.WARNING)
    yield caplog
    transformers_logging.disable_propagation()


def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def detection_processor(config):
    return mf.FlorenceDetectionImageProcessor.from_detection_config(config, size={"shortest_edge": 64,
                                                                                  "longest_edge": 96})


def assert_quiet(caplog):
    loud = [f"{record.name}: {record.getMessage()[:200]}" for record in caplog.get_records("call")
            if record.levelno >= logging.WARNING]
    assert not loud, loud


def assert_inside(results):
    assert results
    for result in results:
        box = result["box"]
        assert 0 <= box["xmin"] <= box["xmax"] <= WIDTH and 0 <= box["ymin"] <= box["ymax"] <= HEIGHT, box


def test_object_detection_pipeline_is_quiet_and_keeps_boxes_in_the_image(tmp_path, log_records):
    torch.manual_seed(0)
    config = tiny_detection_config(id2label={0: "circle", 1: "square", 2: "star"})
    mf.FlorenceForObjectDetection(config).save_pretrained(tmp_path)
    detection_processor(config).save_pretrained(tmp_path)
    results = pipeline("object-detection", model=str(tmp_path))(photo(), threshold=0.0)
    assert_quiet(log_records)
    assert_inside(results)


def test_zero_shot_object_detection_pipeline_is_quiet_and_keeps_boxes_in_the_image(tmp_path, log_records):
    torch.manual_seed(0)
    config = tiny_detection_config(text_config=tiny_text_config().to_dict(), projection_dim=24)
    model = mf.FlorenceForObjectDetection(config)
    tokenizer = mf.FlorenceDetectionTokenizer.from_defaults()
    model.set_class_names(["red circle", "blue star"], tokenizer)
    model.save_pretrained(tmp_path)
    detection_processor(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    detector = pipeline("zero-shot-object-detection", model=str(tmp_path))
    results = detector(photo(), candidate_labels=["yellow ring", "purple hexagon"], threshold=0.0, top_k=50)
    assert_quiet(log_records)
    assert_inside(results)


def test_zero_shot_image_classification_pipeline_is_quiet(tmp_path, log_records):
    torch.manual_seed(0)
    mf.FlorenceModel(tiny_florence_config()).save_pretrained(tmp_path)
    mf.FlorenceProcessor.from_defaults(image_size=32).save_pretrained(tmp_path)
    scores = pipeline("zero-shot-image-classification", model=str(tmp_path))(photo(), candidate_labels=["a", "b"])
    assert_quiet(log_records)
    assert sorted(s["label"] for s in scores) == ["a", "b"]


def test_image_classification_pipeline_is_quiet(tmp_path, log_records):
    torch.manual_seed(0)
    config = tiny_vision_config(id2label={0: "circle", 1: "square"})
    mf.FlorenceForImageClassification(config).save_pretrained(tmp_path)
    mf.FlorenceImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path)
    predictions = pipeline("image-classification", model=str(tmp_path))(photo())
    assert_quiet(log_records)
    assert sorted(p["label"] for p in predictions) == ["circle", "square"]


def test_video_classification_pipeline_is_quiet(tmp_path, log_records):
    torch.manual_seed(0)
    config = mf.load_preset("florence-video-tiny", id2label={0: "left", 1: "right", 2: "still"})
    mf.FlorenceForVideoClassification(config).save_pretrained(tmp_path)
    mf.FlorenceProcessor.from_defaults(image_size=32, num_frames=8).save_pretrained(tmp_path)
    video = torch.randint(0, 255, (16, 32, 32, 3)).numpy()
    scores = pipeline("video-classification", model=str(tmp_path))(video)
    assert_quiet(log_records)
    assert sorted(s["label"] for s in scores) == ["left", "right", "still"]


def test_zero_shot_object_detection_pipeline_takes_labels_longer_than_the_text_tower(tmp_path):
    torch.manual_seed(0)
    config = tiny_detection_config(text_config=tiny_text_config(max_position_embeddings=77).to_dict(),
                                   projection_dim=24)
    mf.FlorenceForObjectDetection(config).save_pretrained(tmp_path)
    detection_processor(config).save_pretrained(tmp_path)
    mf.FlorenceDetectionTokenizer.from_defaults().save_pretrained(tmp_path)
    long_label = " ".join(["striped"] * 100)
    results = pipeline("zero-shot-object-detection", model=str(tmp_path))(
        photo(), candidate_labels=[long_label, "red circle"], threshold=0.0, top_k=10)
    assert len(results) == 10 and {r["label"] for r in results} <= {long_label, "red circle"}
