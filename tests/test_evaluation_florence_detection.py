"""Tests of `modeling_florence/evaluation_florence_detection.py`."""

import pytest
import torch

import modeling_florence as mf
from modeling_florence.evaluation_florence_detection import coco_detection_metrics, dataset_to_coco, detections_to_coco


def test_coco_metrics_of_perfect_and_shifted_detections():
    dataset = mf.build_detection(num_train=3, num_validation=0, num_test=0, image_size=64)["train"]
    ground_truth = dataset_to_coco(dataset)
    perfect = [{"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in row["objects"]["bbox"]]),
                "scores": torch.ones(len(row["objects"]["bbox"])), "labels": torch.tensor(row["objects"]["category"])}
               for row in dataset]
    metrics = coco_detection_metrics(ground_truth, detections_to_coco(dataset["image_id"], perfect))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    wrong_class = [{**d, "labels": (d["labels"] + 1) % 8} for d in perfect]
    assert coco_detection_metrics(ground_truth, detections_to_coco(dataset["image_id"], wrong_class))["AP"] == 0.0
    assert coco_detection_metrics(ground_truth, [])["AP"] == 0.0
