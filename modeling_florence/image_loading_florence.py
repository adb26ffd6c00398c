# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Reading untrusted images with bounded work: sources, size limits, reduced-scale decoding and every PIL mode to RGB.

The processors serve uploads, so everything here assumes hostile input:

- **Sources.** A string is a local path or a `data:` URI. URLs (`http://`, `https://`) are fetched only when the caller
  passes `allow_urls=True`, with a byte cap; other schemes are refused. Bytes and file objects are read in memory.
- **Size before decoding.** An image's header gives its size; one over `max_image_pixels` is refused with a
  `ValueError` that names both, before any pixel is decoded (PIL's own decompression-bomb error becomes the same
  `ValueError`).
- **Reduced-scale decoding.** An image that is not yet loaded (from a path, bytes or a lazy `Image.open`) is decoded
  through `Image.draft`, which JPEG honours by decoding at 1/2, 1/4 or 1/8 scale while staying at least twice the
  requested size (Pillow's `thumbnail` rule), and is turned upright by its EXIF orientation as Transformers'
  `load_image` does. Like `Image.thumbnail`, this loads a lazy image in place, at the reduced size.
- **Modes.** 16-bit data (`I;16*`, and `I`, which PNG/TIFF decoders use for it) is scaled by 1/257 (65535 -> 255);
  `F` is on the 0-255 scale of `L`, as Pillow's own conversions treat it (rounded, clipped, NaN -> 0); anything with
  transparency (`RGBA`, `LA`, `La`, `RGBa`, `PA`, `P`/`L`/`RGB` with a transparency key or an RGBA palette) is
  composited onto white exactly as Transformers' `convert_to_rgb` does; the rest (`1`, `L`, `P`, `CMYK`, `YCbCr`,
  `LAB`, `HSV`, `RGBX`) use Pillow's conversion.
"""

import base64
import binascii
import io
import re
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # 40 MP: ~120 MB as 8-bit RGB; JPEGs up to 64x that decode drafted below it
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_URL_TIMEOUT = 10.0
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_EXIF_ORIENTATION = 0x0112
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def is_url(source: str) -> bool:
    """Whether a string names a resource by scheme (`http://...`, `ftp://...`) rather than a local path."""
    return bool(_SCHEME.match(source))


def fetch_url(url: str, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES, timeout: float = DEFAULT_URL_TIMEOUT) -> bytes:
    """The body of an http(s) URL, refusing more than `max_bytes` (read in chunks: never more than the cap + 1 MiB)."""
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"Only http:// and https:// URLs can be fetched, got {url!r}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked above
        chunks, size = [], 0
        while chunk := response.read(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise ValueError(f"{url} is larger than the download limit of {max_bytes:,} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def is_image_sequence(value) -> bool:
    """Whether `value` is a collection of images to open one by one (a `datasets` column, a generator, ...) rather
    than one image source (a path, URL, bytes, file object or mapping)."""
    if isinstance(value, (str, bytes, bytearray, memoryview, Path, dict)) or hasattr(value, "read"):
        return False
    return hasattr(value, "__iter__")


def resolve_source(source, allow_urls: bool = False, kind: str = "image"):
    """A path, bytes or file object to read from: what `Image.open` or `av.open` is given.

    Strings are local paths, `data:` URIs, or (only with `allow_urls=True`) http(s) URLs. A URL without the opt-in,
    or with another scheme, raises a `ValueError`; a missing path a `FileNotFoundError` naming it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    if hasattr(source, "read"):
        return source
    if not isinstance(source, (str, Path)):
        raise TypeError(
            f"Unsupported {kind} input of type {type(source).__name__}: expected a path, URL, bytes or file object"
        )
    text = str(source)
    if isinstance(source, str) and text.startswith("data:"):
        try:
            return io.BytesIO(base64.b64decode(text.partition(",")[2], validate=True))
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"The {kind} data URI is not valid base64: {error}") from error
    if isinstance(source, str) and is_url(text):
        if not text.lower().startswith(("http://", "https://")):
            raise ValueError(f"Unsupported URL scheme in {text!r}: only local paths and http(s) URLs are read")
        if not allow_urls:
            raise ValueError(
                f"Refusing to fetch {text!r}: {kind} URLs are only downloaded with `allow_urls=True` (strings are read "
                "as local paths otherwise)"
            )
        return io.BytesIO(fetch_url(text))
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"{kind.capitalize()} file {path} does not exist")
    return path


def check_pixels(width: int, height: int, max_pixels: int | None, name: str = "Image") -> None:
    """Refuse an empty image (a side of 0) and a `width` x `height` image over `max_pixels` (None: no limit) with a
    `ValueError` naming both."""
    if width < 1 or height < 1:
        raise ValueError(f"{name} is {width}x{height}: an image needs at least one pixel on each side")
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(
            f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of max_image_pixels="
            f"{max_pixels:,}; raise `max_image_pixels` on the processor to accept it"
        )


def open_image(source, allow_urls: bool = False, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image lazily (header only) from a path, data URI, bytes, file object or opt-in URL, size-checked."""
    name = str(source) if isinstance(source, (str, Path)) and not str(source).startswith("data:") else "Image"
    stream = resolve_source(source, allow_urls=allow_urls)
    try:
        image = Image.open(stream)
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name}: {error} (Florence's limit is max_image_pixels={max_pixels})") from error
    except (OSError, SyntaxError) as error:  # UnidentifiedImageError is an OSError
        raise ValueError(f"Could not read {name} as an image: {error}") from error
    check_pixels(*image.size, max_pixels, name)
    return image


def is_unloaded(image: Image.Image) -> bool:
    """Whether `image` comes from a file and has not been decoded yet (so drafting and size checks are still free)."""
    return isinstance(image, ImageFile.ImageFile) and bool(getattr(image, "tile", None))


def decode_bounded(image: Image.Image, min_side: int | None = None, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                   name: str = "Image") -> Image.Image:
    """Decode `image` with bounded work: JPEGs drafted to about `2 * min_side` pixels a side, the size checked before
    decoding, lazy images turned upright by their EXIF orientation. Loaded images are only size-checked."""
    unloaded = is_unloaded(image)
    if unloaded and min_side:
        # Pillow's own rule (`thumbnail`'s reducing_gap=2): draft no smaller than twice the size the resize goes to
        image.draft(None, (2 * min_side, 2 * min_side))
    check_pixels(*image.size, max_pixels, name)
    if unloaded:
        try:
            image.load()
        except (OSError, SyntaxError) as error:
            raise ValueError(f"Could not decode {name}: {error}") from error
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
    return image


def _high_bit_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """16-bit (`I;16*`, `I`) data as 8-bit, value / 257 rounded; `F` on the 0-255 scale, rounded and clipped."""
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        gray = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    else:
        gray = ((np.clip(values, 0, 65535).astype(np.int32) + 128) // 257).astype(np.uint8)
    transparency = image.info.get("transparency")
    if isinstance(transparency, (int, float)) and not isinstance(transparency, bool):
        gray[values == transparency] = 255  # a transparent key composited onto white
    return gray


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """`(H, W, 3)` uint8 RGB of a PIL image of any mode (see the module docstring for each mode's rule)."""
    if image.mode in _HIGH_BIT_DEPTH_MODES or image.mode == "F":
        return np.repeat(_high_bit_depth_to_uint8(image)[..., None], 3, axis=2)
    if image.has_transparency_data:
        if image.mode == "La":  # Pillow has no La -> RGBA conversion; un-premultiplying to LA first is exact
            image = image.convert("LA")
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    try:
        return np.array(image.convert("RGB"))
    except ValueError as error:
        raise ValueError(f"Images of mode {image.mode!r} cannot be converted to RGB: {error}") from error


__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "check_pixels",
    "decode_bounded",
    "fetch_url",
    "is_unloaded",
    "is_url",
    "open_image",
    "resolve_source",
    "to_rgb_array",
]
