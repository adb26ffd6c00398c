"""FlorenceDetectionImageProcessor post-processing: detections stay inside their image, for every image of a batch
of different, non-square sizes."""

import numpy as np
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
