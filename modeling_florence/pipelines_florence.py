# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Transformers' vision pipelines, with inputs read by Florence's own loader when the model is a Florence model.

Transformers' pipelines turn a path or URL into a decoded RGB image (`transformers.image_utils.load_image`) before the
processor sees it: URLs are fetched without asking, a 100-megapixel PNG is decoded in full before any limit applies,
16-bit images are clipped and transparency turns black. For Florence models these subclasses read every source with
`image_loading_florence` instead, as the processors do:

- **Sources.** Paths, `data:` URIs, bytes and file objects; http(s) URLs only with `allow_urls=True` (a pipeline or
  call argument: `pipeline(task, model=folder, allow_urls=True)` or `detector(url, allow_urls=True)`).
- **Size before decoding.** An image over the image processor's `max_image_pixels` is refused with a `ValueError` from
  its header, before any pixel is decoded; JPEGs are decoded at reduced scale when the resize allows.
- **Modes.** EXIF orientation, 16-bit data, and transparency composited onto white, as in the processors.

For any other model the pipelines behave exactly as Transformers' own (their `preprocess` is called unchanged).
`register_pipelines()` (called by the package `__init__`) makes them the implementation of their tasks.
"""

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import SizeDict
from transformers.pipelines import (
    SUPPORTED_TASKS,
    ImageClassificationPipeline,
    ObjectDetectionPipeline,
    VideoClassificationPipeline,
    ZeroShotImageClassificationPipeline,
    ZeroShotObjectDetectionPipeline,
)

from .image_loading_florence import DEFAULT_MAX_IMAGE_PIXELS, decode_bounded, open_image, to_rgb_array
from .image_processing_florence import decode_side


def is_florence_model(model) -> bool:
    """Whether a pipeline's model is one of this package's (its config's `model_type` starts with `florence`)."""
    return str(getattr(getattr(model, "config", None), "model_type", "")).startswith("florence")


class FlorenceSourceMixin:
    """`allow_urls` as a pipeline argument, and `read_source`: one image source read by `image_loading_florence`."""

    def _sanitize_parameters(self, allow_urls=None, **kwargs):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if allow_urls is not None:
            if not isinstance(allow_urls, bool):
                raise TypeError(f"allow_urls must be True or False, got {allow_urls!r}")
            preprocess_params["allow_urls"] = allow_urls
        return preprocess_params, forward_params, postprocess_params

    def read_source(self, image, allow_urls: bool = False):
        """An RGB PIL image (or the array/tensor given) read with Florence's bounded loader; for other models the
        input is returned unchanged, for Transformers' own loading."""
        if not is_florence_model(self.model) or isinstance(image, (np.ndarray, torch.Tensor)):
            return image
        processor = self.image_processor
        max_pixels = getattr(processor, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
        if not isinstance(image, Image.Image):
            image = open_image(image, allow_urls=allow_urls, max_pixels=max_pixels)
        size = getattr(processor, "size", None)
        size = SizeDict(**size) if isinstance(size, dict) else size
        min_side = decode_side(size, getattr(processor, "do_resize", True)) if isinstance(size, SizeDict) else None
        return Image.fromarray(to_rgb_array(decode_bounded(image, min_side, max_pixels)))


class FlorenceObjectDetectionPipeline(FlorenceSourceMixin, ObjectDetectionPipeline):
    def preprocess(self, image, allow_urls: bool = False, **kwargs):
        return super().preprocess(self.read_source(image, allow_urls), **kwargs)


class FlorenceZeroShotObjectDetectionPipeline(FlorenceSourceMixin, ZeroShotObjectDetectionPipeline):
    def preprocess(self, inputs, allow_urls: bool = False, **kwargs):
        return super().preprocess({**inputs, "image": self.read_source(inputs["image"], allow_urls)}, **kwargs)


class FlorenceZeroShotImageClassificationPipeline(FlorenceSourceMixin, ZeroShotImageClassificationPipeline):
    def preprocess(self, image, *args, allow_urls: bool = False, **kwargs):
        return super().preprocess(self.read_source(image, allow_urls), *args, **kwargs)


class FlorenceImageClassificationPipeline(FlorenceSourceMixin, ImageClassificationPipeline):
    def preprocess(self, image, allow_urls: bool = False, **kwargs):
        return super().preprocess(self.read_source(image, allow_urls), **kwargs)


class FlorenceVideoClassificationPipeline(FlorenceSourceMixin, VideoClassificationPipeline):
    """Florence's video processor decodes the source itself (bounded: frames counted by demuxing, only sampled frames
    converted, each size-checked); this passes it `allow_urls`, which Transformers' pipeline cannot."""

    def preprocess(self, video, num_frames=None, frame_sampling_rate=1, allow_urls: bool = False):
        if not is_florence_model(self.model) or self.video_processor is None:
            return super().preprocess(video, num_frames=num_frames, frame_sampling_rate=frame_sampling_rate)
        return self.video_processor(video, allow_urls=allow_urls, return_tensors="pt").to(self.dtype)


PIPELINE_CLASSES = {
    "object-detection": FlorenceObjectDetectionPipeline,
    "zero-shot-object-detection": FlorenceZeroShotObjectDetectionPipeline,
    "zero-shot-image-classification": FlorenceZeroShotImageClassificationPipeline,
    "image-classification": FlorenceImageClassificationPipeline,
    "video-classification": FlorenceVideoClassificationPipeline,
}


def register_pipelines() -> None:
    """Make the Florence pipelines the implementation of their tasks in `pipeline(...)` (each is its Transformers
    parent for non-Florence models). Idempotent; sets the task table directly, so Transformers logs no overwrite."""
    for task, pipeline_class in PIPELINE_CLASSES.items():
        SUPPORTED_TASKS[task]["impl"] = pipeline_class


__all__ = [
    "FlorenceImageClassificationPipeline",
    "FlorenceObjectDetectionPipeline",
    "FlorenceVideoClassificationPipeline",
    "FlorenceZeroShotImageClassificationPipeline",
    "FlorenceZeroShotObjectDetectionPipeline",
    "is_florence_model",
    "register_pipelines",
]
