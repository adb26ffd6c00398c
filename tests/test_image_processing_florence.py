"""Tests of `modeling_florence/image_processing_florence.py`."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from modeling_florence import FlorenceImageProcessor, FlorenceImageProcessorPil

from florence_testing import BACKENDS, ResizeRecorder


def images():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 255, (180, 120), dtype=np.uint8), "L"),
        Image.fromarray(rng.integers(0, 255, (240, 240, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 255, (500, 260, 3), dtype=np.uint8)).convert("P"),
        rng.integers(0, 255, (90, 70, 3), dtype=np.uint8),  # numpy, channels last
        torch.randint(0, 255, (3, 120, 150), dtype=torch.uint8),  # torch, channels first
    ]


@pytest.mark.parametrize("processor_class", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 100_000), (100_000, 1), (7, 60_001)])
def test_extreme_aspect_ratio_costs_what_the_crop_costs(processor_class, shape):
    processor = processor_class()
    recorder = ResizeRecorder(processor)
    out = processor(Image.new("RGB", shape[::-1], (10, 200, 30)), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 224, 224)
    assert max(recorder.inputs) <= 1000  # the source columns the crop can reach, not 100,000 (nor 224 x 22.4M)
    expected = CLIPImageProcessor()(Image.new("RGB", (50, 50), (10, 200, 30)), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("processor_class, reference", [(FlorenceImageProcessor, CLIPImageProcessor)])
@pytest.mark.parametrize("height, width, exact", [(100, 390, True), (64, 255, True), (20, 2000, False),
                                                  (2000, 20, False), (3, 900, False)])
def test_wide_images_match_clip_exactly_or_within_a_pixel(processor_class, reference, height, width, exact):
    y, x = np.mgrid[0:height, 0:width]
    gray = (127 + 60 * np.sin(x / 7.0) + 60 * np.cos(y / 5.0 + x / 11.0)).astype(np.uint8)
    image = Image.fromarray(np.stack([gray, gray[::-1], 255 - gray], -1))
    settings = dict(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    ours = processor_class(**settings)(image, return_tensors="pt")["pixel_values"]
    theirs = reference(**settings)(image, return_tensors="pt")["pixel_values"]
    difference = (ours - theirs).abs()
    if exact:
        assert difference.max() == 0
    else:  # cut before resizing: within about one output pixel of the whole-image resize
        assert difference.max() < 0.1 and difference.mean() < 0.03


def test_uncropped_resize_caps_the_long_side():
    processor = FlorenceImageProcessor(do_center_crop=False)
    with pytest.raises(ValueError, match=r"gives 22400000x224, over max_resized_edge=8192.*longest_edge"):
        processor(Image.new("RGB", (100_000, 1)))
    clamped = processor(Image.new("RGB", (3000, 100)), size={"shortest_edge": 224, "longest_edge": 448},
                        return_tensors="pt")
    assert clamped["pixel_values"].shape[-2:] == (15, 448)
    with pytest.raises(ValueError, match="longest_edge"):  # the clamp would leave the short side no pixel
        processor(Image.new("RGB", (100_000, 1)), size={"shortest_edge": 224, "longest_edge": 448})
    assert processor(Image.new("RGB", (300, 100)), return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 672)


@pytest.mark.parametrize(
    "ours, reference", [(FlorenceImageProcessor, CLIPImageProcessor), (FlorenceImageProcessorPil, CLIPImageProcessorPil)]
)
def test_image_processor_matches_clip(ours, reference):
    settings = dict(size={"shortest_edge": 96}, crop_size={"height": 96, "width": 96})
    for image in images():
        expected = reference(**settings)(image, return_tensors="pt")["pixel_values"]
        actual = ours(**settings)(image, return_tensors="pt")["pixel_values"]
        assert actual.shape == (1, 3, 96, 96)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    batch = ours(**settings)(images()[:3], return_tensors="pt")["pixel_values"]
    assert batch.shape == (3, 3, 96, 96)


def test_image_processor_options_and_errors():
    image = images()[0]  # 300x400
    kept = FlorenceImageProcessor(do_center_crop=False, size={"shortest_edge": 150})(image, return_tensors="pt")
    assert kept["pixel_values"].shape == (1, 3, 150, 200)
    imagenet = FlorenceImageProcessor(normalization="imagenet")
    assert imagenet.image_mean == pytest.approx([0.485, 0.456, 0.406])
    with pytest.raises(ValueError, match="normalization must be one of"):
        FlorenceImageProcessor(normalization="cifar")
    with pytest.raises((ValueError, TypeError), match="supported|Invalid|type"):
        FlorenceImageProcessor()(object())


@pytest.mark.parametrize("processor_class", BACKENDS)
def test_a_datasets_column_or_generator_of_images_is_a_batch(processor_class):
    from datasets import Dataset, Features, Image as ImageFeature

    images = [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue", "green")]
    column = Dataset.from_dict({"image": images}, features=Features({"image": ImageFeature()}))["image"]
    processor = processor_class()
    expected = processor(images, return_tensors="pt")["pixel_values"]
    for batch in (column, (image for image in images)):
        torch.testing.assert_close(processor(batch, return_tensors="pt")["pixel_values"], expected)
    with pytest.raises(TypeError, match="Unsupported image input of type int"):
        processor(7, return_tensors="pt")
