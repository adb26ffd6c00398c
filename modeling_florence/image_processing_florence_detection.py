# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Detection image processor: aspect-keeping resize, padding to a multiple of 128 with `pixel_mask`, COCO
annotations -> DETR-format `labels`, and `post_process_object_detection` in Transformers' output format.

It is the Florence image processor (same bounded, mode-correct decoding and normalisation) with the centre crop off,
so every guarantee for untrusted uploads holds here too.
"""

import math

import numpy as np
import torch
from PIL import Image
from torchvision.ops import batched_nms, box_convert
from transformers.image_processing_base import BatchFeature

from .image_processing_florence import FlorenceImageProcessor, source_normalization


def image_size(image) -> tuple[int, int]:
    """(height, width) of a PIL image, an (H, W[, C]) / (C, H, W) array or tensor."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    shape = tuple(image.shape)
    if len(shape) == 2:
        return shape
    if len(shape) == 3:
        return shape[:2] if shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4) else shape[1:]
    raise ValueError(f"Cannot read the size of an image of shape {shape}")


def clip_boxes(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """xyxy `boxes` clipped to a `width` x `height` image (x to [0, width], y to [0, height])."""
    upper = boxes.new_tensor([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), upper)


class FlorenceDetectionImageProcessor(FlorenceImageProcessor):
    r"""
    Image processor of [`FlorenceForObjectDetection`].

    Images are resized keeping their aspect ratio (shortest edge `size["shortest_edge"]`, long side at most
    `size["longest_edge"]`: 800/1333 by default, as DyHead), normalised, and padded at the bottom/right to a common
    size that is a multiple of `size_divisibility` (128); `pixel_mask` marks real pixels. Images smaller than the
    multiple are padded up to it.

    `annotations` (one per image) are COCO detection dicts, `{"image_id": int, "annotations": [{"bbox": [x, y, w, h],
    "category_id": int}, ...]}` in pixels of the original image, as DETR's processor takes. They become `labels`:
    per image `class_labels` (the category ids; the model checks they are below its number of classes) and `boxes`
    normalised `(cx, cy, w, h)`. Boxes are clipped to the image; a box with a non-positive width or height, or lying
    entirely outside its image, is an error naming the image and the annotation. An image with no annotations gives
    empty labels and trains as background.

    `score_threshold`, `nms_iou_threshold`, `max_detections` and `pre_nms_top_k` are the post-processing defaults
    (copied from a detector's config by `from_detection_config`).
    """

    do_center_crop = False
    size = {"shortest_edge": 800, "longest_edge": 1333}
    model_input_names = ["pixel_values", "pixel_mask"]

    def __init__(
        self,
        size_divisibility: int = 128,
        score_threshold: float = 0.05,
        nms_iou_threshold: float = 0.6,
        max_detections: int = 100,
        pre_nms_top_k: int = 1000,
        **kwargs,
    ):
        kwargs.setdefault("do_center_crop", False)
        super().__init__(**kwargs)
        if not isinstance(size_divisibility, int) or size_divisibility < 1:
            raise ValueError(f"size_divisibility must be a positive integer, got {size_divisibility!r}")
        self.size_divisibility = size_divisibility
        self.score_threshold = score_threshold
        self.nms_iou_threshold = nms_iou_threshold
        self.max_detections = max_detections
        self.pre_nms_top_k = pre_nms_top_k

    @classmethod
    def from_detection_config(cls, config, source=None, **kwargs) -> "FlorenceDetectionImageProcessor":
        """A processor with a detector config's padding and inference settings (`kwargs` override). `source`: the
        folder the detector's image tower came from (`from_florence`): its saved normalisation is used (a Florence-2
        folder's ImageNet mean/std; see `source_normalization`), unless `kwargs` set one."""
        for name in ("size_divisibility", "score_threshold", "nms_iou_threshold", "max_detections", "pre_nms_top_k"):
            kwargs.setdefault(name, getattr(config, name))
        if not {"normalization", "image_mean", "image_std"} & set(kwargs):
            kwargs.update(source_normalization(source))
        return cls(**kwargs)

    # ------------------------------------------------------------------------------------------------------------------
    # Preprocessing
    # ------------------------------------------------------------------------------------------------------------------
    def preprocess(self, images, annotations=None, return_tensors=None, allow_urls: bool = False, **kwargs):
        single = not isinstance(images, (list, tuple))
        images = self.fetch_images([images] if single else list(images), allow_urls=allow_urls)
        if len(images) == 0:
            raise ValueError("No images given: pass at least one image")
        if annotations is not None:
            annotations = [annotations] if isinstance(annotations, dict) else list(annotations)
            if len(annotations) != len(images):
                raise ValueError(f"Got {len(annotations)} annotations for {len(images)} images: give one COCO "
                                 "annotation dict per image")
        sizes = [image_size(image) for image in images]
        for index, (height, width) in enumerate(sizes):
            if height < 1 or width < 1:
                raise ValueError(f"Image {index} is empty ({width}x{height} pixels)")
        kwargs["do_center_crop"] = False
        processed = super().preprocess(images, return_tensors=None, **kwargs)["pixel_values"]
        pixel_values, pixel_mask = self.pad(processed)
        data = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        encoded = BatchFeature(data=data, tensor_type=return_tensors)
        if annotations is not None:
            encoded["labels"] = [
                BatchFeature(self.convert_annotation(annotation, size, index), tensor_type=return_tensors or "pt")
                for index, (annotation, size) in enumerate(zip(annotations, sizes))
            ]
        return encoded

    def pad(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad `(C, h, w)` images at the bottom/right to one size, a multiple of `size_divisibility`."""
        multiple = self.size_divisibility
        height = math.ceil(max(image.shape[-2] for image in images) / multiple) * multiple
        width = math.ceil(max(image.shape[-1] for image in images) / multiple) * multiple
        pixel_values = images[0].new_zeros(len(images), images[0].shape[0], height, width)
        pixel_mask = torch.zeros(len(images), height, width, dtype=torch.long)
        for index, image in enumerate(images):
            pixel_values[index, :, : image.shape[-2], : image.shape[-1]] = image
            pixel_mask[index, : image.shape[-2], : image.shape[-1]] = 1
        return pixel_values, pixel_mask

    @staticmethod
    def convert_annotation(annotation: dict, size: tuple[int, int], index: int) -> dict:
        """One COCO image annotation -> `class_labels`, normalised `(cx, cy, w, h)` `boxes`, `image_id`, `orig_size`."""
        if not isinstance(annotation, dict) or "annotations" not in annotation:
            raise ValueError(f"annotations[{index}] must be a dict with an 'annotations' list (COCO format: "
                             "{'image_id': ..., 'annotations': [{'bbox': [x, y, w, h], 'category_id': ...}]})")
        height, width = size
        boxes, classes = [], []
        for number, item in enumerate(annotation["annotations"]):
            if "bbox" not in item or "category_id" not in item:
                raise ValueError(f"annotations[{index}] object {number} needs 'bbox' and 'category_id', got "
                                 f"{sorted(item)}")
            x, y, w, h = (float(v) for v in item["bbox"])
            if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
                raise ValueError(f"annotations[{index}] object {number} has a box of non-positive or non-finite size "
                                 f"{item['bbox']} (COCO boxes are [x, y, width, height])")
            x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"annotations[{index}] object {number} has box {item['bbox']} outside its "
                                 f"{width}x{height} image")
            boxes.append([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height])
            classes.append(int(item["category_id"]))
        return {
            "class_labels": np.asarray(classes, dtype=np.int64),
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "image_id": np.asarray([annotation.get("image_id", index)], dtype=np.int64),
            "orig_size": np.asarray([height, width], dtype=np.int64),
        }

    # ------------------------------------------------------------------------------------------------------------------
    # Post-processing
    # ------------------------------------------------------------------------------------------------------------------
    def post_process_object_detection(self, outputs, threshold: float | None = None, target_sizes=None,
                                      top_k: int | None = None) -> list[dict]:
        """Detections per image, as Transformers' detection processors: `{"scores", "labels", "boxes"}` with boxes in
        xyxy pixels of `target_sizes` (`(B, 2)` heights and widths of the original images; without them, boxes are
        normalised to [0, 1]). Boxes are clipped to the image (ATSS regressions can reach past its border), as
        detectron2 and mmdetection do, before NMS.

        Score = sigmoid(class logit) * sigmoid(centerness); locations above `threshold` (default
        `score_threshold`), the best `pre_nms_top_k` of them, class-wise NMS at `nms_iou_threshold`, then at most
        `top_k` (default `max_detections`) per image."""
        threshold = self.score_threshold if threshold is None else threshold
        top_k = self.max_detections if top_k is None else top_k
        logits, pred_boxes, centerness = outputs["logits"], outputs["pred_boxes"], outputs["centerness"]
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(f"target_sizes has {len(target_sizes)} entries for {len(logits)} images")
        scores = logits.float().sigmoid() * centerness.float().sigmoid()[..., None]
        num_classes = scores.shape[-1]
        results = []
        for image, image_scores in enumerate(scores):
            flat = image_scores.flatten()
            candidates = (flat > threshold).nonzero().squeeze(1)
            candidates = candidates[flat[candidates].topk(min(self.pre_nms_top_k, len(candidates))).indices]
            locations, labels = candidates // num_classes, candidates % num_classes
            boxes = box_convert(pred_boxes[image, locations].float(), "cxcywh", "xyxy")
            height, width = (1.0, 1.0) if target_sizes is None else (float(v) for v in target_sizes[image])
            boxes = clip_boxes(boxes * boxes.new_tensor([width, height, width, height]), height, width)
            keep = batched_nms(boxes, flat[candidates], labels, self.nms_iou_threshold)[:top_k]
            results.append({"scores": flat[candidates][keep], "labels": labels[keep], "boxes": boxes[keep]})
        return results


__all__ = ["FlorenceDetectionImageProcessor"]
