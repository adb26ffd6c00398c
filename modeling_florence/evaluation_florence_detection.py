# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""COCO detection metrics (AP, AP50, AP75, AP small/medium/large, AR@100) through `pycocotools`' `COCOeval`.

Works on any COCO ground truth (a json file or dict) and on the Shapes / `load_coco_detection` columns
(`dataset_to_coco`). Predictions are Transformers' post-processed detections (`{"scores", "labels", "boxes"}` with
xyxy pixel boxes) or COCO result dicts. The average precision itself is computed by pycocotools, never here.
"""

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np

COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                     "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large")


def object_feature(dataset, key: str):
    """The feature of `objects.<key>` (a ClassLabel for class columns), whichever way `datasets` nests it."""
    objects = dataset.features["objects"]
    column = (objects.feature if hasattr(objects, "feature") else objects)[key]
    return getattr(column, "feature", column)


def dataset_to_coco(dataset, category_names: list[str] | None = None, category_key: str = "category") -> dict:
    """COCO ground truth from the detection columns (`image_id`, `width`, `height`, `objects` with `bbox` [x, y, w, h]
    and a category index); categories get ids 0..K-1 in order. `category_key` picks the objects' column holding the
    class index; `category_names` defaults to that column's ClassLabel names."""
    if category_names is None:
        category_names = object_feature(dataset, category_key).names
    images, annotations = [], []
    for row in dataset.select_columns(["image_id", "width", "height", "objects"]):
        images.append({"id": int(row["image_id"]), "width": int(row["width"]), "height": int(row["height"])})
        objects = row["objects"]
        for bbox, category in zip(objects["bbox"], objects[category_key]):
            x, y, w, h = (float(v) for v in bbox)
            annotations.append({"id": len(annotations) + 1, "image_id": int(row["image_id"]), "bbox": [x, y, w, h],
                                "category_id": int(category), "area": w * h, "iscrowd": 0})
    categories = [{"id": index, "name": name} for index, name in enumerate(category_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_to_coco(image_ids, detections) -> list[dict]:
    """Post-processed detections (xyxy pixel boxes) of the images `image_ids` -> COCO result dicts."""
    results = []
    for image_id, detection in zip(image_ids, detections):
        boxes = np.asarray(detection["boxes"], dtype=np.float64).reshape(-1, 4)
        for (x0, y0, x1, y1), score, label in zip(boxes, np.asarray(detection["scores"]).reshape(-1),
                                                   np.asarray(detection["labels"]).reshape(-1)):
            results.append({"image_id": int(image_id), "category_id": int(label),
                            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(score)})
    return results


def coco_detection_metrics(ground_truth: dict | str | Path, results: list[dict], verbose: bool = False,
                           category_ids: list[int] | None = None) -> dict:
    """COCO box metrics of `results` (COCO result dicts) against `ground_truth` (a COCO dict or json path), over
    the ground truth's images, averaged over `category_ids` (default: every category). Values are fractions in
    [0, 1]; COCO's -1 (no object of that size) is kept."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(ground_truth, (str, Path)):
        ground_truth = json.loads(Path(ground_truth).read_text())
    ground_truth = copy.deepcopy(ground_truth)
    ground_truth.setdefault("info", {})
    ground_truth.setdefault("licenses", [])
    for annotation in ground_truth["annotations"]:
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco = COCO()
        coco.dataset = ground_truth
        coco.createIndex()
        if not results:  # pycocotools cannot load an empty result list: nothing detected scores 0
            return {name: 0.0 for name in COCO_METRIC_NAMES}
        evaluation = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iouType="bbox")
        if category_ids is not None:
            evaluation.params.catIds = sorted(category_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(COCO_METRIC_NAMES, evaluation.stats)}


__all__ = ["COCO_METRIC_NAMES", "coco_detection_metrics", "dataset_to_coco", "detections_to_coco"]
