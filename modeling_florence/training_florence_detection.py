# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Detection data plumbing shared by the fine-tuning script, the demo and the tests: dataset rows -> COCO
annotations -> processor batches (a collator for variable-size images), open-vocabulary class names of Shapes, and
held-out evaluation (post-processing + COCO mAP)."""

import logging
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_convert

from .training_florence import fused_adamw
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


logger = logging.getLogger(__name__)
# Colour-shape classes never seen as boxes in open-vocabulary training (one per colour, shapes varied).
# Output fields Trainer leaves out of the predictions it hands to compute_metrics (which reads the other three).
IGNORED_OUTPUTS = ["loss_dict", "feature_maps", "hidden_states", "attentions"]
HELD_OUT_CLASSES = ("red star", "green hexagon", "blue cross", "yellow ring", "purple square", "orange circle",
                    "pink triangle", "cyan diamond")


def build_detector(args, config_overrides: dict) -> "FlorenceForObjectDetection":
    from .configuration_florence import load_preset
    from .configuration_florence_detection import FlorenceDetectionConfig
    from .modeling_florence_detection import FlorenceForObjectDetection

    preset = load_preset(args.preset)
    head = {key: getattr(preset, key) for key in ("fpn_channels", "num_dyhead_blocks", "dyhead_norm_groups",
                                                  "anchor_scale", "size_divisibility")}
    head.update(config_overrides)
    if args.base and Path(args.base).is_dir():
        return FlorenceForObjectDetection.from_florence(args.base, open_vocabulary=args.open_vocabulary, **head)
    logger.warning("No pretrained Florence folder (--base %s): the detector starts from random weights", args.base)
    if not args.open_vocabulary:
        preset = FlorenceDetectionConfig(**{**preset.to_dict(), "text_config": None, "projection_dim": None})
    return FlorenceForObjectDetection(FlorenceDetectionConfig(**{**preset.to_dict(), **head}))


def detection_data(args):
    """(train, eval) datasets, the class names and the objects' column holding the class index."""
    from . import shapes
    from .data_florence import load_coco_detection

    if args.coco_train:
        train = load_coco_detection(args.coco_train, args.coco_train_images)
        evaluation = load_coco_detection(args.coco_eval, args.coco_eval_images)
        return train, evaluation, object_feature(train, "category").names, "category"
    data = shapes.build_detection(num_train=args.num_train, num_validation=args.num_eval, num_test=0,
                              image_size=args.image_size, seed=args.seed)
    if not args.open_vocabulary:
        return data["train"], data["validation"], list(shapes.SHAPES), "category"
    names = [f"{colour} {shape}" for colour in shapes.COLOURS for shape in shapes.SHAPES]
    train, evaluation = (add_colour_shape_classes(data[split], names) for split in ("train", "validation"))
    held_out = {names.index(name) for name in HELD_OUT_CLASSES}
    # classes "never seen as boxes": training images holding any held-out object are dropped
    train = train.filter(lambda row: not held_out & set(row["objects"]["colour_shape"]))
    return train, evaluation, names, "colour_shape"


class OpenVocabularyCollator(DetectionCollator):
    """Adds the (frozen) class-name embeddings of the training classes to every batch."""

    def __init__(self, processor, category_key, class_embeds):
        super().__init__(processor, category_key)
        self.class_embeds = class_embeds

    def __call__(self, rows):
        return {**super().__call__(rows), "class_embeds": self.class_embeds}


def make_compute_metrics(processor):
    """COCO mAP from Trainer's per-batch predictions `(logits, pred_boxes, centerness)` and DETR-format labels."""

    def compute_metrics(evaluation):
        images, annotations, results = [], [], []
        for (logits, boxes, centerness), labels in zip(evaluation.predictions, evaluation.label_ids):
            outputs = {"logits": torch.as_tensor(logits), "pred_boxes": torch.as_tensor(boxes),
                       "centerness": torch.as_tensor(centerness)}
            sizes = [tuple(int(v) for v in np.asarray(label["orig_size"])) for label in labels]
            for label, size, found in zip(labels, sizes,
                                          processor.post_process_object_detection(outputs, target_sizes=sizes)):
                image_id = len(images)
                images.append({"id": image_id, "height": size[0], "width": size[1]})
                height, width = size
                pixels = box_convert(torch.as_tensor(np.asarray(label["boxes"])).reshape(-1, 4), "cxcywh", "xywh")
                pixels = pixels * torch.tensor([width, height, width, height])
                for box, category in zip(pixels.tolist(), np.asarray(label["class_labels"]).tolist()):
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": box,
                                        "category_id": int(category), "area": box[2] * box[3], "iscrowd": 0})
                for box, score, category in zip(found["boxes"].tolist(), found["scores"].tolist(),
                                                 found["labels"].tolist()):
                    results.append({"image_id": image_id, "category_id": category, "score": score,
                                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
        categories = sorted({a["category_id"] for a in annotations} | {r["category_id"] for r in results})
        ground_truth = {"images": images, "annotations": annotations,
                        "categories": [{"id": c, "name": str(c)} for c in categories]}
        return coco_detection_metrics(ground_truth, results)

    return compute_metrics


def draw_predictions(model, processor, dataset, names, path: Path, count: int = 6, **model_inputs) -> None:
    """A PNG of held-out images with their predicted boxes and labels (score >= 0.3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = dataset.select(range(min(count, len(dataset))))
    detections = predict(model, processor, rows, threshold=0.3, **model_inputs)
    figure, axes = plt.subplots(1, len(rows), figsize=(3 * len(rows), 3.3))
    for axis, row, found in zip(np.atleast_1d(axes), rows, detections):
        axis.imshow(row["image"])
        axis.axis("off")
        for (x0, y0, x1, y1), score, label in zip(found["boxes"].tolist(), found["scores"].tolist(),
                                                  found["labels"].tolist()):
            axis.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", linewidth=1.5))
            axis.text(x0, y0 - 1, f"{names[label]} {score:.2f}", color="black", fontsize=6,
                      bbox={"facecolor": "lime", "pad": 0.5, "linewidth": 0})
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def detection_optimizer(model, learning_rate: float, backbone_learning_rate: float, weight_decay: float = 1e-4):
    """AdamW with the image tower (`vision_model.`) at `backbone_learning_rate` and the rest (FPN, DyHead, heads) at
    `learning_rate`; both checked (non-negative, finite), the fused kernel where available."""
    backbone = [p for n, p in model.named_parameters() if n.startswith("vision_model.") and p.requires_grad]
    head = [p for n, p in model.named_parameters() if not n.startswith("vision_model.") and p.requires_grad]
    return fused_adamw([{"params": backbone, "lr": backbone_learning_rate}, {"params": head, "lr": learning_rate}],
                       lr=learning_rate, weight_decay=weight_decay)
