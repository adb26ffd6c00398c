"""Tests of `modeling_florence/pipelines_florence.py`."""

import io
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline
from transformers.utils import logging as transformers_logging

import modeling_florence as mf
from modeling_florence import image_loading_florence
from modeling_florence.pipelines_florence import FlorenceObjectDetectionPipeline
from tests.test_common import tiny_detection_config, tiny_florence_config, tiny_text_config, tiny_vision_config


REPO = Path(__file__).resolve().parent.parent
SIZE = 64


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory):
    """An open-vocabulary tiny detector with three stored class names, saved with its processor and tokenizer."""
    torch.manual_seed(0)
    config = tiny_detection_config(text_config=tiny_text_config().to_dict(), projection_dim=24)
    model = mf.FlorenceForObjectDetection(config).eval()
    tokenizer = mf.FlorenceDetectionTokenizer.from_defaults()
    model.set_class_names(["red circle", "blue star", "green cross"], tokenizer)
    folder = tmp_path_factory.mktemp("detector")
    model.save_pretrained(folder)
    mf.FlorenceDetectionImageProcessor.from_detection_config(
        config, size={"shortest_edge": SIZE, "longest_edge": SIZE}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def two_tower_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("two-tower")
    mf.FlorenceModel(tiny_florence_config()).save_pretrained(folder)
    mf.FlorenceProcessor.from_defaults(image_size=SIZE).save_pretrained(folder)
    return folder


def write_100_megapixel_png(path):
    """10,000 x 10,000 one-bit pixels: 12 MB in memory, a few hundred KiB as PNG, 300 MB once decoded to RGB."""
    image = Image.new("1", (10_000, 10_000), 0)
    image.paste(1, (0, 0, 5_000, 10_000))
    image.save(path)
    return path


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


def test_pipelines_are_the_florence_classes(detector_folder):
    assert isinstance(pipeline("object-detection", model=str(detector_folder)), FlorenceObjectDetectionPipeline)


def test_a_100_megapixel_png_is_refused_before_decoding(detector_folder, tmp_path):
    """Peak memory (ru_maxrss) of the pipeline call, in a fresh process: Transformers' own loader decodes the image
    to 300 MB of RGB before any limit; Florence's refuses it from the header."""
    png = write_100_megapixel_png(tmp_path / "huge.png")
    assert png.stat().st_size < 1 << 20
    script = textwrap.dedent(f"""
        import json, resource
        from transformers import pipeline
        import modeling_florence
        detector = pipeline("object-detection", model={str(detector_folder)!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            detector({str(png)!r})
            error = None
        except ValueError as exc:
            error = str(exc)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({{"error": error, "grown_kib": grown}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["error"] and "max_image_pixels" in report["error"], report
    assert report["grown_kib"] < 64 * 1024, f"peak memory grew by {report['grown_kib'] / 1024:.0f} MiB"


@pytest.mark.parametrize("task", ["object-detection", "zero-shot-object-detection"])
def test_urls_need_allow_urls(detector_folder, monkeypatch, task):
    fetched = []
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), "white").save(buffer, format="PNG")

    def fake_fetch(url, *args, **kwargs):  # no network in tests: what the URL would return
        fetched.append(url)
        return buffer.getvalue()

    monkeypatch.setattr(image_loading_florence, "fetch_url", fake_fetch)
    runner = pipeline(task, model=str(detector_folder))
    extra = {"candidate_labels": ["red circle"]} if task.startswith("zero") else {}
    with pytest.raises(ValueError, match="allow_urls=True"):
        runner("https://example.com/cat.png", threshold=0.0, **extra)
    assert fetched == []
    assert runner("https://example.com/cat.png", threshold=0.0, allow_urls=True, **extra)
    assert fetched == ["https://example.com/cat.png"]
    opted_in = pipeline(task, model=str(detector_folder), allow_urls=True)
    assert opted_in("https://example.com/cat.png", threshold=0.0, **extra)


def test_every_mode_reads_as_the_processor_reads_it(two_tower_folder, tmp_path):
    """A transparent RGBA PNG and a 16-bit PNG give the scores of the RGB image the loader makes of them
    (white background, 16-bit scaled), not of Transformers' `convert("RGB")` (black background, clipped)."""
    classifier = pipeline("zero-shot-image-classification", model=str(two_tower_folder))
    labels = ["a circle", "a square", "a star"]
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[16:48, 16:48] = (200, 30, 30, 255)  # a red square on a transparent background
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    Image.fromarray(np.full((SIZE, SIZE), 40000, np.uint16)).save(tmp_path / "deep.png")
    for name in ("clear.png", "deep.png"):
        expected = Image.fromarray(image_loading_florence.to_rgb_array(Image.open(tmp_path / name)))
        got = {r["label"]: r["score"] for r in classifier(str(tmp_path / name), candidate_labels=labels)}
        want = {r["label"]: r["score"] for r in classifier(expected, candidate_labels=labels)}
        assert got == pytest.approx(want, abs=1e-6), name
        naive = {r["label"]: r["score"] for r in classifier(Image.open(tmp_path / name).convert("RGB"),
                                                              candidate_labels=labels)}
        assert naive != pytest.approx(want, abs=1e-6), name


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
