# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Detection data plumbing shared by the fine-tuning script, the demo and the tests: dataset rows -> COCO
annotations -> processor batches (a collator for variable-size images), open-vocabulary class names of Shapes, and
held-out evaluation (post-processing + COCO mAP)."""

import torch

from .evaluation_florence_detection import coco_detection_metrics, dataset_to_coco, detections_to_coco, object_feature


def row_annotation(row: dict, category_key: str = "category") -> dict:
    """A detection row (`image_id`, `objects` with COCO `bbox` and a class index) as the COCO dict the detection image
    processor takes."""
    objects = row["objects"]
    return {
        "image_id": row["image_id"],
        "annotations": [{"bbox": list(bbox), "category_id": int(category)}
                        for bbox, category in zip(objects["bbox"], objects[category_key])],
    }


def add_colour_shape_classes(dataset, names: list[str]):
    """Shapes detection rows gain `objects.colour_shape`: the index of "<colour> <shape>" in `names` (-1 if absent).
    These are the open-vocabulary classes (64 combinations of 8 colours and 8 shapes)."""
    shapes = object_feature(dataset, "category").names
    index = {name: i for i, name in enumerate(names)}

    def add(row):
        objects = dict(row["objects"])
        objects["colour_shape"] = [index.get(f"{colour} {shapes[shape]}", -1)
                                   for colour, shape in zip(objects["colour"], objects["category"])]
        return {"objects": objects}

    return dataset.map(add)


class DetectionCollator:
    """Batches rows for `FlorenceForObjectDetection`: the processor resizes, pads to a common multiple of
    `size_divisibility` (images of any size) and turns the COCO annotations into DETR-format `labels`."""

    def __init__(self, processor, category_key: str = "category"):
        self.processor = processor
        self.category_key = category_key

    def __call__(self, rows: list[dict]) -> dict:
        images = [row["image"].convert("RGB") if hasattr(row["image"], "convert") else row["image"] for row in rows]
        annotations = [row_annotation(row, self.category_key) for row in rows]
        batch = self.processor(images=images, annotations=annotations, return_tensors="pt")
        return {"pixel_values": batch["pixel_values"], "pixel_mask": batch["pixel_mask"],
                "labels": [dict(label) for label in batch["labels"]]}


@torch.no_grad()
def predict(model, processor, dataset, batch_size: int = 8, threshold: float | None = None, **model_inputs) -> list:
    """Post-processed detections (xyxy pixels of each original image) for every row of `dataset`."""
    model.eval()
    detections = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        images = [row["image"].convert("RGB") for row in rows]
        inputs = processor(images=images, return_tensors="pt").to(model.device)
        outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"], **model_inputs)
        sizes = [(image.height, image.width) for image in images]
        detections += processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
    return detections


def evaluate_detection(model, processor, dataset, category_key: str = "category", category_names=None,
                       batch_size: int = 8, category_ids=None, **model_inputs) -> dict:
    """COCO AP/AP50/AP75/... of `model` on `dataset` (score threshold: the processor's default, 0.05), averaged over
    `category_ids` (default: all)."""
    detections = predict(model, processor, dataset, batch_size=batch_size, **model_inputs)
    ground_truth = dataset_to_coco(dataset, category_names=category_names, category_key=category_key)
    results = detections_to_coco(dataset["image_id"], [{k: v.cpu() for k, v in d.items()} for d in detections])
    return coco_detection_metrics(ground_truth, results, category_ids=category_ids)


__all__ = ["DetectionCollator", "add_colour_shape_classes", "evaluate_detection", "predict", "row_annotation"]
