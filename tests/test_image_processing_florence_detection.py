"""Tests of `modeling_florence/image_processing_florence_detection.py`."""

import numpy as np
import pytest
import torch
from PIL import Image

import modeling_florence as mf
from tests.test_common import tiny_detection_config


def assert_inside(result, height, width):
    boxes = result["boxes"]
    assert len(boxes)
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all(), boxes
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


def test_boxes_reaching_past_the_border_are_clipped_to_each_image():
    processor = mf.FlorenceDetectionImageProcessor()
    logits = torch.full((2, 3, 1), 8.0)
    centerness = torch.full((2, 3), 8.0)
    # normalised (cx, cy, w, h): past the right/bottom, past the left/top, and one wholly inside
    boxes = torch.tensor([[0.95, 0.9, 0.3, 0.4], [0.05, 0.1, 0.3, 0.4], [0.5, 0.5, 0.2, 0.2]]).expand(2, 3, 4)
    outputs = {"logits": logits, "pred_boxes": boxes, "centerness": centerness}
    sizes = [(150, 230), (400, 90)]  # (height, width): landscape and portrait
    results = processor.post_process_object_detection(outputs, threshold=0.1, target_sizes=sizes)
    for result, (height, width) in zip(results, sizes):
        assert_inside(result, height, width)
        by_x = sorted(result["boxes"].tolist())
        torch.testing.assert_close(torch.tensor(by_x[0]), torch.tensor([0.0, 0.0, 0.2 * width, 0.3 * height]))
        torch.testing.assert_close(torch.tensor(by_x[-1]), torch.tensor([0.8 * width, 0.7 * height, width, height]))
        torch.testing.assert_close(torch.tensor(by_x[1]), torch.tensor([0.4 * width, 0.4 * height,
                                                                         0.6 * width, 0.6 * height]))
    for result in processor.post_process_object_detection(outputs, threshold=0.1):  # normalised: inside [0, 1]
        assert_inside(result, 1.0, 1.0)


def test_a_detector_on_a_batch_of_different_sizes_keeps_every_box_inside():
    torch.manual_seed(0)
    config = tiny_detection_config()
    model = mf.FlorenceForObjectDetection(config).eval()
    processor = mf.FlorenceDetectionImageProcessor.from_detection_config(
        config, size={"shortest_edge": 64, "longest_edge": 128})
    rng = np.random.default_rng(0)
    sizes = [(150, 230), (200, 70), (96, 96)]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    results = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
    for result, (height, width) in zip(results, sizes):
        assert len(result["boxes"]) == config.max_detections
        assert_inside(result, height, width)


# ----------------------------------------------------------------------------------------------------------------------
# Processor and post-processing
# ----------------------------------------------------------------------------------------------------------------------
def test_processor_resizes_pads_and_converts_coco_annotations():
    processor = mf.FlorenceDetectionImageProcessor(size={"shortest_edge": 48, "longest_edge": 80}, size_divisibility=32)
    images = [Image.new("RGB", (100, 50), "red"), Image.new("RGB", (30, 60), "blue")]
    annotations = [
        {"image_id": 7, "annotations": [{"bbox": [10, 5, 20, 10], "category_id": 2},
                                        {"bbox": [90, 40, 20, 20], "category_id": 0}]},  # clipped at the corner
        {"image_id": 8, "annotations": []},
    ]
    batch = processor(images=images, annotations=annotations, return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 96, 96)  # 80x40 and 40x80 (long sides capped at 80), padded
    assert batch["pixel_mask"][0].sum() == 40 * 80 and batch["pixel_mask"][1, :80, :40].all()
    assert batch["pixel_mask"][0, :40, :80].all() and not batch["pixel_mask"][0, 40:].any()
    first, second = batch["labels"]
    assert first["class_labels"].tolist() == [2, 0] and first["image_id"].item() == 7
    torch.testing.assert_close(first["boxes"][0], torch.tensor([0.2, 0.2, 0.2, 0.2]))
    torch.testing.assert_close(first["boxes"][1], torch.tensor([0.95, 0.9, 0.1, 0.2]))
    assert second["boxes"].shape == (0, 4) and second["class_labels"].shape == (0,)


def test_processor_pads_small_images_up_to_the_multiple():
    processor = mf.FlorenceDetectionImageProcessor(size={"shortest_edge": 20, "longest_edge": 40})
    batch = processor(images=Image.new("RGB", (12, 10)), return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, 128, 128) and batch["pixel_mask"].sum() == 20 * 24


@pytest.mark.parametrize(
    "annotation, match",
    [
        ({"bbox": [1, 1, 0, 5], "category_id": 0}, "non-positive"),
        ({"bbox": [1, 1, -3, 5], "category_id": 0}, "non-positive"),
        ({"bbox": [200, 1, 5, 5], "category_id": 0}, "outside its 40x30 image"),
        ({"bbox": [1, 1, 5, 5]}, "category_id"),
    ],
)
def test_processor_rejects_bad_boxes(annotation, match):
    processor = mf.FlorenceDetectionImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    with pytest.raises(ValueError, match=match):
        processor(images=Image.new("RGB", (40, 30)), annotations={"image_id": 0, "annotations": [annotation]})


def test_processor_rejects_empty_inputs():
    processor = mf.FlorenceDetectionImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    with pytest.raises(ValueError, match="empty|No images"):
        processor(images=np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="No images"):
        processor(images=[])
    with pytest.raises(ValueError, match="2 annotations for 1 images"):
        processor(images=Image.new("RGB", (40, 30)), annotations=[{"annotations": []}, {"annotations": []}])


def test_post_processing_scores_nms_and_pixel_boxes():
    processor = mf.FlorenceDetectionImageProcessor(nms_iou_threshold=0.6)
    big = 8.0
    logits = torch.full((1, 4, 2), -big)
    logits[0, 0, 1], logits[0, 1, 1], logits[0, 2, 0] = big, 1.0, big  # 1 duplicates 0 (same class), 2 another class
    logits[0, 3, 0] = 0.0  # sigmoid 0.5 * centerness: below the threshold below
    centerness = torch.tensor([[big, big, big, -big]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    outputs = {"logits": logits, "pred_boxes": boxes, "centerness": centerness}
    result = processor.post_process_object_detection(outputs, threshold=0.3, target_sizes=[(100, 200)])[0]
    assert result["labels"].tolist() == [1, 0]  # the duplicate is suppressed, the other class overlaps freely
    torch.testing.assert_close(result["boxes"][0], torch.tensor([80.0, 40.0, 120.0, 60.0]))
    torch.testing.assert_close(result["scores"][0], torch.sigmoid(torch.tensor(big)) ** 2)
    assert processor.post_process_object_detection(outputs, threshold=0.3, top_k=1)[0]["boxes"].shape == (1, 4)
    normalised = processor.post_process_object_detection(outputs, threshold=0.3)[0]["boxes"][0]
    torch.testing.assert_close(normalised, torch.tensor([0.4, 0.4, 0.6, 0.6]))


def test_processor_takes_the_normalisation_of_a_florence2_source_folder(tmp_path):
    """A detector built on the DaViT of a Florence-2 folder (`from_florence`) must read images normalised as
    Florence-2 was trained (ImageNet mean/std, saved in the folder's processor config), not with CoSwin's CLIP
    default; a folder without a saved processor keeps the default, and explicit settings win."""
    from modeling_florence.image_processing_florence import NORMALIZATIONS

    folder = tmp_path / "florence2"
    mf.FlorenceGenerationProcessor.from_defaults(image_size=64, image_seq_length=5).save_pretrained(folder)
    config = tiny_detection_config()
    processor = mf.FlorenceDetectionImageProcessor.from_detection_config(config, source=folder)
    assert processor.normalization == "imagenet"
    np.testing.assert_allclose(processor.image_mean, NORMALIZATIONS["imagenet"][0])
    np.testing.assert_allclose(processor.image_std, NORMALIZATIONS["imagenet"][1])
    image = Image.new("RGB", (40, 32), (120, 60, 200))
    expected = mf.FlorenceDetectionImageProcessor.from_detection_config(config, normalization="imagenet")(image)
    torch.testing.assert_close(processor(image)["pixel_values"], expected["pixel_values"])

    (tmp_path / "bare").mkdir()
    for source in (None, tmp_path / "bare"):
        default = mf.FlorenceDetectionImageProcessor.from_detection_config(config, source=source)
        np.testing.assert_allclose(default.image_mean, NORMALIZATIONS["clip"][0])
    explicit = mf.FlorenceDetectionImageProcessor.from_detection_config(config, source=folder, normalization="clip")
    np.testing.assert_allclose(explicit.image_mean, NORMALIZATIONS["clip"][0])
