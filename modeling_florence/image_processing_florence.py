# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Image processors for Florence: CLIP-style resize (shortest edge, bicubic), centre crop, rescale and normalise.

Two backends share one set of defaults: `FlorenceImageProcessor` (torchvision, batched tensors, the default) and
`FlorenceImageProcessorPil` (PIL + numpy). Both accept PIL images, numpy arrays and torch tensors, single or batched,
and convert grayscale, RGBA and palette images to RGB. With `do_center_crop=False` the aspect ratio is kept (resize
of the shortest edge only, optionally capped by `size["longest_edge"]`) for dense tasks such as detection.
"""

from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PILImageResampling,
)

# Statistics a checkpoint was trained with: CLIP's for UniCL/CLIP-lineage towers, ImageNet's for timm/Swin ones.
NORMALIZATIONS = {
    "clip": (list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)),
    "imagenet": (list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)),
}


class FlorenceImageProcessorDefaults:
    """Settings shared by both backends; `normalization` picks the mean/std unless they are given explicitly."""

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 224}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    model_input_names = ["pixel_values"]

    def __init__(self, normalization: str = "clip", **kwargs):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
        mean, std = NORMALIZATIONS[normalization]
        kwargs.setdefault("image_mean", mean)
        kwargs.setdefault("image_std", std)
        super().__init__(**kwargs)
        self.normalization = normalization


class FlorenceImageProcessor(FlorenceImageProcessorDefaults, TorchvisionBackend):
    """Florence image processor on the torchvision backend (batched tensor ops; the default)."""


class FlorenceImageProcessorPil(FlorenceImageProcessorDefaults, PilBackend):
    """Florence image processor on the PIL backend (no torchvision needed at preprocessing time)."""


__all__ = ["FlorenceImageProcessor", "FlorenceImageProcessorPil", "NORMALIZATIONS"]
