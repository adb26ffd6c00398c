# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Image processors for Florence: CLIP-style resize (shortest edge, bicubic), centre crop, rescale and normalise.

Two backends share one set of defaults: `FlorenceImageProcessor` (torchvision, batched tensors, the default) and
`FlorenceImageProcessorPil` (PIL + numpy). Both accept PIL images, numpy arrays, torch tensors, local paths, bytes
and `data:` URIs, single or batched, and give every PIL mode correct RGB values (16-bit, float, CMYK, palette,
alpha; see `image_loading_florence`). With `do_center_crop=False` the aspect ratio is kept (resize of the shortest
edge only, optionally capped by `size["longest_edge"]`) for dense tasks such as detection.

Work is bounded for untrusted uploads, and results equal Transformers' `CLIPImageProcessor` exactly otherwise:

- images over `max_image_pixels` are refused before decoding; unloaded JPEGs decode at reduced scale;
- URLs are fetched only when a call passes `allow_urls=True` (a call-time flag, never saved in a config);
- resize + centre crop of an extreme aspect ratio (resized long side over `PRECROP_RATIO` times the crop) first cuts
  the source to the columns (or rows) the crop can reach, plus the bicubic filter's support, so its cost follows the
  crop, not the image (within about one output pixel of resizing the whole image);
- without the centre crop, a shortest-edge resize whose long side would pass `max_resized_edge` raises a
  `ValueError` (set `size["longest_edge"]` to clamp instead).
"""

import json
import math
from pathlib import Path

from PIL import Image
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    PILImageResampling,
    is_valid_image,
)

from .image_loading_florence import (
    DEFAULT_MAX_IMAGE_PIXELS,
    check_pixels,
    decode_bounded,
    is_image_sequence,
    open_image,
    to_rgb_array,
)

# Statistics a checkpoint was trained with: CLIP's for UniCL/CLIP-lineage towers, ImageNet's for timm/Swin ones.
NORMALIZATIONS = {
    "clip": (list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)),
    "imagenet": (list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)),
}
DEFAULT_MAX_RESIZED_EDGE = 8192
PRECROP_RATIO = 4  # up to this resized-long-side / crop ratio, images are processed exactly as CLIP does


def resized_shape(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """Output size of a shortest-edge resize, computed as Transformers computes it (long side truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def crop_window(height: int, width: int, shortest_edge: int, crop_height: int, crop_width: int) -> tuple[slice, slice]:
    """Rows and columns of a source image that a shortest-edge resize followed by a centre crop can reach.

    The whole image unless the resized long side exceeds `PRECROP_RATIO` times the crop (and the shortest edge):
    then a window centred exactly like the crop, as long as the crop maps to in the source plus the bicubic filter's
    support (2 output pixels, widened by the scale when shrinking) and one pixel of slack on each side."""
    everything = (slice(0, height), slice(0, width))
    if min(height, width) < 1:
        return everything
    long_is_height = width <= height
    long = height if long_is_height else width
    crop_long = crop_height if long_is_height else crop_width
    new_long = max(resized_shape(height, width, shortest_edge))
    if new_long <= PRECROP_RATIO * max(crop_long, shortest_edge):
        return everything
    scale = new_long / long  # output pixels per source pixel
    margin = math.ceil(2 * max(1.0, 1.0 / scale)) + 1
    keep = math.ceil(crop_long / scale) + 2 * margin
    keep += (long - keep) % 2  # same parity as the image, so the window is centred exactly
    if keep >= long:
        return everything
    start = (long - keep) // 2
    window = slice(start, start + keep)
    return (window, slice(0, width)) if long_is_height else (slice(0, height), window)


def decode_side(size, do_resize: bool) -> int | None:
    """The side a resize to `size` needs from the source (for JPEG drafting), or None when nothing is resized."""
    if not do_resize or size is None:
        return None
    sides = [side for side in (size.shortest_edge, size.height, size.width, size.max_height, size.max_width) if side]
    return max(sides) if sides else None


def _same_values(values: list[float], known: list[float]) -> bool:
    return len(values) == len(known) and all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(values, known))


def source_normalization(source) -> dict:
    """The image normalisation saved with a model folder, as processor keyword arguments: `{"normalization": name}`
    when it is one of `NORMALIZATIONS`, else `{"image_mean": ..., "image_std": ...}`; `{}` when `source` is not a
    local folder or saved none (the processor's defaults then apply).

    Read from `preprocessor_config.json`, else `processor_config.json` (its `image_processor` entry or top level):
    a Florence-2 folder (ours or Transformers' `florence2`) keeps ImageNet's mean/std there, not CoSwin's CLIP
    statistics, so a detector or a VQA model built on its DaViT must be fed images normalised that way."""
    if not isinstance(source, (str, Path)) or not Path(source).is_dir():
        return {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = Path(source) / name
        if not path.is_file():
            continue
        saved = json.loads(path.read_text())
        saved = saved.get("image_processor", saved) if isinstance(saved.get("image_processor"), dict) else saved
        if saved.get("image_mean") is None or saved.get("image_std") is None:
            continue
        mean, std = [float(v) for v in saved["image_mean"]], [float(v) for v in saved["image_std"]]
        for normalization, (known_mean, known_std) in NORMALIZATIONS.items():
            if _same_values(mean + std, known_mean + known_std):
                return {"normalization": normalization}
        return {"image_mean": mean, "image_std": std}
    return {}


class FlorenceCLIPTransforms:
    """CLIP's preprocessing settings, shared by the image and the video processor: bicubic resize of the short side
    to 224, 224x224 centre crop, rescale, CLIP mean/std normalisation, RGB conversion."""

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


class FlorenceImageProcessorDefaults(FlorenceCLIPTransforms):
    """Settings and bounded, mode-correct input handling shared by both backends.

    `normalization` picks the mean/std unless they are given explicitly. `max_image_pixels` (None: no limit) bounds
    the pixels of any input image; `max_resized_edge` (None: no limit) bounds the long side of an uncropped resize."""

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        normalization: str = "clip",
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        max_resized_edge: int | None = DEFAULT_MAX_RESIZED_EDGE,
        **kwargs,
    ):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
        for name, value in (("max_image_pixels", max_image_pixels), ("max_resized_edge", max_resized_edge)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None (no limit), got {value!r}")
        if "allow_urls" in kwargs:
            raise ValueError("allow_urls is a call-time argument (processor(images, allow_urls=True)), not a setting")
        mean, std = NORMALIZATIONS[normalization]
        kwargs.setdefault("image_mean", mean)
        kwargs.setdefault("image_std", std)
        super().__init__(**kwargs)
        self.normalization = normalization
        self.max_image_pixels = max_image_pixels
        self.max_resized_edge = max_resized_edge

    def preprocess(self, images, *args, allow_urls: bool = False, **kwargs):
        """Transformers' `preprocess`, with string/bytes sources opened here: URLs only when `allow_urls=True`."""
        return super().preprocess(self.fetch_images(images, allow_urls=allow_urls), *args, **kwargs)

    def fetch_images(self, image_url_or_urls, allow_urls: bool = False):
        """Open paths, `data:` URIs, bytes (and, with `allow_urls=True`, http(s) URLs) lazily and size-checked.

        Replaces Transformers' version, which downloads any http(s) string it is given; images are passed through."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item, allow_urls=allow_urls) for item in image_url_or_urls]
        if is_valid_image(image_url_or_urls):
            return image_url_or_urls
        if is_image_sequence(image_url_or_urls):  # a `datasets` column of images, a generator, ...
            return self.fetch_images(list(image_url_or_urls), allow_urls=allow_urls)
        return open_image(image_url_or_urls, allow_urls=allow_urls, max_pixels=self.max_image_pixels)

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs):
        """Decode (bounded), convert to RGB by mode, then Transformers' conversion to the backend's layout; finally
        cut an extreme-aspect image to the part its centre crop can reach."""
        if isinstance(image, Image.Image):
            image = decode_bounded(image, decode_side(kwargs.get("size"), kwargs.get("do_resize")),
                                   self.max_image_pixels)
            if do_convert_rgb:
                image, input_data_format = to_rgb_array(image), ChannelDimension.LAST
        else:
            shape = tuple(image.shape)
            if len(shape) == 3:  # (H, W, C) when the last axis looks like channels, else (C, H, W)
                shape = shape[:2] if shape[-1] in (1, 3, 4) else shape[1:]
            check_pixels(shape[-1], shape[-2], self.max_image_pixels)
        image = super().process_image(image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format,
                                      **kwargs)
        return self.bound_resize_work(image, **kwargs)

    def bound_resize_work(self, image, do_resize=None, size=None, do_center_crop=None, crop_size=None, **kwargs):
        """Make the resize of a channels-first image cost at most a few times its output (see the module docstring)."""
        if not do_resize or size is None or not size.shortest_edge:
            return image  # fixed output sizes are bounded already
        height, width = image.shape[-2:]
        if size.longest_edge:  # capped: bounded, but an extreme aspect ratio can leave the short side no pixel
            if round(size.longest_edge * min(height, width) / max(height, width)) < 1 < size.shortest_edge:
                raise ValueError(f"A {width}x{height} image resized to longest_edge={size.longest_edge} keeps no pixel "
                                 "on its short side")
            return image
        if do_center_crop and crop_size is not None and crop_size.height and crop_size.width:
            rows, columns = crop_window(height, width, size.shortest_edge, crop_size.height, crop_size.width)
            return image[..., rows, columns]
        new_height, new_width = resized_shape(height, width, size.shortest_edge)
        if self.max_resized_edge is not None and max(new_height, new_width) > self.max_resized_edge:
            raise ValueError(
                f"Resizing a {width}x{height} image to shortest edge {size.shortest_edge} gives {new_width}x"
                f"{new_height}, over max_resized_edge={self.max_resized_edge}: set size['longest_edge'] to clamp the "
                "long side, crop the image, or raise max_resized_edge"
            )
        return image

    def to_dict(self):
        output = super().to_dict()
        output.pop("allow_urls", None)
        return output


class FlorenceImageProcessor(FlorenceImageProcessorDefaults, TorchvisionBackend):
    """Florence image processor on the torchvision backend (batched tensor ops; the default)."""


class FlorenceImageProcessorPil(FlorenceImageProcessorDefaults, PilBackend):
    """Florence image processor on the PIL backend (no torchvision needed at preprocessing time)."""


__all__ = [
    "FlorenceImageProcessor",
    "FlorenceImageProcessorPil",
    "NORMALIZATIONS",
    "crop_window",
    "resized_shape",
    "source_normalization",
]
