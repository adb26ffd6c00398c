# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Video processor for Florence: decode (PyAV), sample frames, then the CLIP-style per-frame transforms.

Returns `pixel_values_videos` of shape `(B * views, T, C, H, W)`. Sampling is uniform over the clip
(`frame_stride=None`) or every `frame_stride`-th frame from a centred window; a clip shorter than `num_frames` is
padded by repeating frames (uniform sampling repeats the nearest frames, strided sampling the last one), so every
output has exactly `num_frames` frames. Test-time views follow Video Swin: `num_clips` temporal clips spread over the
video times `num_crops` spatial crops (1: centre; 3: start, centre and end of the longer side), ordered video-major
(video 0's views first), with `num_views` in the output so scores can be averaged back per video.

Work is bounded for untrusted uploads. A file is opened as a file object (never as an FFmpeg URL); URLs are
downloaded only with `allow_urls=True`. Its frame count (container header, else a count of packets) must be at most
`max_frames`, and each frame at most `max_image_pixels`, or a `ValueError` names the number and the limit. Packets
are decoded only up to the last sampled frame, and only sampled frames are converted to RGB, each scaled by FFmpeg
straight to about twice the resize target when it is larger, so memory follows the output, not the video. Frames of
an extreme aspect ratio are cut to what the centre crop can reach, as the image processor does.
"""

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import SizeDict, get_size_dict
from transformers.video_processing_utils import BaseVideoProcessor

from .image_loading_florence import DEFAULT_MAX_IMAGE_PIXELS, check_pixels, decode_bounded, resolve_source, to_rgb_array
from .image_processing_florence import (
    DEFAULT_MAX_RESIZED_EDGE,
    FlorenceCLIPTransforms,
    crop_window,
    decode_side,
    resized_shape,
)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".gif")
DEFAULT_MAX_FRAMES = 9000  # 5 minutes at 30 frames/s


def _import_av():
    try:
        import av
    except ImportError as error:
        raise ImportError("Decoding video files needs PyAV: `pip install av` (or the `video` extra)") from error
    return av


@contextlib.contextmanager
def _open_container(data, name: str):
    """An `av` container on a path (opened as a file object: FFmpeg never parses the name as a URL or protocol) or on
    a file object (rewound first, so the same bytes can be opened again); both are closed on exit."""
    av = _import_av()
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(open(data, "rb")) if isinstance(data, Path) else data
        if hasattr(handle, "seek"):
            handle.seek(0)
        try:
            container = stack.enter_context(av.open(handle, mode="r"))
        except Exception as error:  # noqa: BLE001 - PyAV raises many error types for unreadable input
            raise ValueError(f"Could not decode video file {name}: {error}") from error
        if not container.streams.video:
            raise ValueError(f"Video file {name} holds no video stream")
        yield container


def frame_to_array(frame, min_side: int | None = None) -> np.ndarray:
    """`(H, W, 3)` uint8 RGB of a decoded frame, scaled by FFmpeg (area filter) to a shortest side of `2 * min_side`
    when it is larger than that: a huge frame never exists as full-size RGB."""
    width, height = frame.width, frame.height
    if min_side and min(width, height) > 2 * min_side:
        scale = 2 * min_side / min(width, height)
        return frame.to_ndarray(format="rgb24", width=max(1, round(width * scale)),
                                height=max(1, round(height * scale)), interpolation="AREA")
    return frame.to_ndarray(format="rgb24")


def count_frames(data, name: str, max_frames: int) -> int:
    """Frames in a video: the container's count when it has one, else its video packets (demuxed, not decoded),
    refused past `max_frames`."""
    with _open_container(data, name) as container:
        stream = container.streams.video[0]
        total = stream.frames
        if total <= 0:
            total = 0
            for packet in container.demux(stream):
                total += packet.size > 0
                if total > max_frames:
                    break
    if total > max_frames:
        raise ValueError(f"Video {name} has {'more than ' if stream.frames <= 0 else ''}{total:,} frames, over "
                         f"max_frames={max_frames:,}; raise `max_frames` on the processor to accept it")
    return total


def _decode_at(data, name: str, wanted: set[int], min_side, max_pixels) -> tuple[dict[int, np.ndarray], int]:
    """Decode up to the last wanted frame, converting only the wanted ones; also returns how many were decoded."""
    av = _import_av()
    frames, decoded, last = {}, 0, max(wanted)
    with _open_container(data, name) as container:
        stream = container.streams.video[0]
        if stream.codec_context.width and stream.codec_context.height:  # some containers leave the header size 0
            check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels, f"Video {name}")
        try:
            for frame in container.decode(stream):
                check_pixels(frame.width, frame.height, max_pixels, f"A frame of video {name}")
                if decoded in wanted:
                    frames[decoded] = frame_to_array(frame, min_side)
                decoded += 1
                if decoded > last:
                    break
        except av.FFmpegError as error:
            raise ValueError(f"Could not decode video file {name}: {error}") from error
    return frames, decoded


def decode_video(source, sample=None, *, min_side: int | None = None, max_frames: int = DEFAULT_MAX_FRAMES,
                 max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, allow_urls: bool = False) -> np.ndarray:
    """Frames of a video as `(T, H, W, 3)` uint8 via PyAV (the `video` extra), with bounded work.

    `source` is a path, bytes, a file object, or (with `allow_urls=True`) an http(s) URL. `sample(total)` gives the
    indices to return (any order, repeats allowed; default: every frame). Only those frames are converted, each
    scaled to a shortest side of about `2 * min_side` when given. The video must have at most `max_frames` frames
    and each frame at most `max_pixels` pixels."""
    _import_av()
    name = str(source) if isinstance(source, (str, Path)) else "from memory"
    data = resolve_source(source, allow_urls=allow_urls, kind="video")
    total = count_frames(data, name, max_frames)
    for _ in range(2):  # a second pass only when the header claimed more frames than the file holds
        if total < 1:
            raise ValueError(f"Video file {name} holds no decodable video frames")
        indices = np.arange(total) if sample is None else np.asarray(sample(total), dtype=np.int64)
        frames, decoded = _decode_at(data, name, set(indices.tolist()), min_side, max_pixels)
        if len(frames) == len(set(indices.tolist())):
            return np.stack([frames[index] for index in indices.tolist()])
        total = decoded
    raise ValueError(f"Video file {name} holds no decodable video frames")


def uniform_indices(total: int, num_frames: int, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """`num_frames` evenly spread indices over [start, end) (repeating frames when the span is shorter)."""
    end = total if end is None else end
    positions = start + (np.arange(num_frames) + 0.5) * (end - start) / num_frames
    return np.clip(np.floor(positions), 0, total - 1).astype(np.int64)


def strided_indices(total: int, num_frames: int, stride: int, center: float) -> np.ndarray:
    """Every `stride`-th frame of a window centred at `center`, the last frame repeated past the end."""
    span = (num_frames - 1) * stride + 1
    start = int(round(center - span / 2))
    start = max(0, min(start, total - span)) if total >= span else 0
    return np.minimum(start + np.arange(num_frames) * stride, total - 1).astype(np.int64)


def _as_size(size, param_name: str = "size") -> SizeDict:
    if isinstance(size, SizeDict):
        return size
    return SizeDict(**get_size_dict(size, default_to_square=False, param_name=param_name))


class FlorenceVideoProcessor(FlorenceCLIPTransforms, BaseVideoProcessor):
    """Decoding, frame sampling (uniform or strided), multi-clip/multi-crop views, and CLIP-style normalisation.

    `max_frames` bounds a video's frame count, `max_image_pixels` each frame's pixels, and `max_resized_edge` the
    long side of an uncropped resize (3-crop views): past them, a `ValueError` names the value and the limit."""

    do_sample_frames = False  # sampling happens here, before the per-frame transforms
    num_frames = 8
    model_input_names = ["pixel_values_videos"]

    def __init__(self, num_frames: int = 8, frame_stride: int | None = None, max_frames: int = DEFAULT_MAX_FRAMES,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 max_resized_edge: int | None = DEFAULT_MAX_RESIZED_EDGE, **kwargs):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if frame_stride is not None and frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1 or None (uniform sampling), got {frame_stride}")
        if not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"max_frames must be a positive integer, got {max_frames!r}")
        for name, value in (("max_image_pixels", max_image_pixels), ("max_resized_edge", max_resized_edge)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None (no limit), got {value!r}")
        if "allow_urls" in kwargs:
            raise ValueError("allow_urls is a call-time argument (processor(videos, allow_urls=True)), not a setting")
        super().__init__(**kwargs)
        self.num_frames = num_frames
        self.frame_stride = frame_stride
        self.max_frames = max_frames
        self.max_image_pixels = max_image_pixels
        self.max_resized_edge = max_resized_edge

    def clip_indices(self, total: int, num_clips: int = 1) -> list[np.ndarray]:
        """Frame indices of each of `num_clips` clips spread evenly over a video of `total` frames."""
        clips = []
        for clip in range(num_clips):
            start, end = clip * total / num_clips, (clip + 1) * total / num_clips
            if self.frame_stride is None:
                clips.append(uniform_indices(total, self.num_frames, start, end))
            else:
                clips.append(strided_indices(total, self.num_frames, self.frame_stride, (start + end) / 2))
        return clips

    def sample_clips(self, video, num_clips: int = 1, min_side: int | None = None, allow_urls: bool = False) -> list:
        """The `num_clips` clips of one video (a source, a list of frames, or a 4-D array), each `num_frames` long."""
        if isinstance(video, (str, Path, bytes, bytearray, memoryview)) or hasattr(video, "read"):
            sample = lambda total: np.concatenate(self.clip_indices(total, num_clips))  # noqa: E731
            frames = decode_video(video, sample, min_side=min_side, max_frames=self.max_frames,
                                  max_pixels=self.max_image_pixels, allow_urls=allow_urls)
            return list(frames.reshape(num_clips, self.num_frames, *frames.shape[1:]))
        if isinstance(video, (list, tuple)):
            if not video:
                raise ValueError("A video must have at least one frame, got an empty list")
            if len(video) > self.max_frames:
                raise ValueError(f"The video has {len(video):,} frames, over max_frames={self.max_frames:,}")
            if all(isinstance(frame, Image.Image) for frame in video):  # decode (bounded) and convert sampled ones
                return [np.stack([to_rgb_array(decode_bounded(video[index], min_side, self.max_image_pixels))
                                  for index in indices]) for indices in self.clip_indices(len(video), num_clips)]
            video = np.stack([np.asarray(frame) for frame in video])
        if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 4 and video.shape[0] > 0:
            if video.shape[0] > self.max_frames:
                raise ValueError(f"The video has {video.shape[0]:,} frames, over max_frames={self.max_frames:,}")
            height, width = video.shape[1:3] if video.shape[-1] in (1, 3, 4) else video.shape[2:]
            check_pixels(width, height, self.max_image_pixels, "A video frame")
            return [video[torch.as_tensor(indices) if isinstance(video, torch.Tensor) else indices]
                    for indices in self.clip_indices(video.shape[0], num_clips)]
        raise ValueError(
            "Each video must be a file path, bytes, a list of frames, or a 4-D (frames, height, width, channels) "
            f"array, got {type(video).__name__} with shape {getattr(video, 'shape', None)}"
        )

    def bound_clip(self, clip, size: SizeDict, crop_size: SizeDict, crop: bool):
        """Cut an extreme-aspect clip to what the centre crop reaches, or refuse an uncropped resize past
        `max_resized_edge` (the image processor's rule, applied to a whole clip)."""
        if not size.shortest_edge or size.longest_edge:
            return clip
        channels_last = clip.shape[-1] in (1, 3, 4)
        height, width = clip.shape[1:3] if channels_last else clip.shape[-2:]
        if crop:
            rows, columns = crop_window(height, width, size.shortest_edge, crop_size.height, crop_size.width)
            return clip[:, rows, columns] if channels_last else clip[..., rows, columns]
        new_height, new_width = resized_shape(height, width, size.shortest_edge)
        if self.max_resized_edge is not None and max(new_height, new_width) > self.max_resized_edge:
            raise ValueError(
                f"Resizing {width}x{height} frames to shortest edge {size.shortest_edge} gives {new_width}x"
                f"{new_height}, over max_resized_edge={self.max_resized_edge}"
            )
        return clip

    def __call__(self, videos, num_clips: int = 1, num_crops: int = 1, allow_urls: bool = False, **kwargs):
        if num_clips < 1 or num_crops not in (1, 3):
            raise ValueError(f"num_clips must be >= 1 and num_crops 1 or 3, got {num_clips} and {num_crops}")
        single = isinstance(videos, (str, Path, bytes, bytearray)) or (
            isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 4
        ) or (isinstance(videos, list) and videos and isinstance(videos[0], Image.Image))
        videos = [videos] if single else list(videos)
        # Sampling happens here (`clip_indices`); the video-classification pipeline still passes these two.
        kwargs.pop("do_sample_frames", None)
        kwargs.pop("num_frames", None)
        size = _as_size(kwargs.get("size") or self.size)
        crop_size = _as_size(kwargs.get("crop_size") or self.crop_size, "crop_size")
        do_resize = kwargs.get("do_resize", self.do_resize)
        crop = num_crops == 1 and kwargs.get("do_center_crop", self.do_center_crop)
        min_side = decode_side(size, do_resize)
        clips = [clip for video in videos for clip in self.sample_clips(video, num_clips, min_side, allow_urls)]
        if do_resize:
            clips = [self.bound_clip(clip, size, crop_size, crop) for clip in clips]
        return_tensors = kwargs.pop("return_tensors", "pt")
        if num_crops == 1:
            outputs = super().__call__(clips, do_sample_frames=False, return_tensors=return_tensors, **kwargs)
        else:
            outputs = super().__call__(clips, do_sample_frames=False, do_center_crop=False, return_tensors=None,
                                       **kwargs)
            outputs["pixel_values_videos"] = torch.stack(
                [crop for clip in outputs["pixel_values_videos"] for crop in self.three_crops(clip)]
            )
        outputs["num_views"] = num_clips * num_crops
        return outputs

    def three_crops(self, clip: torch.Tensor) -> list[torch.Tensor]:
        """Start, centre and end crops of `crop_size` along the longer side (Video Swin's 3-crop testing)."""
        crop_h, crop_w = self.crop_size["height"], self.crop_size["width"]
        height, width = clip.shape[-2:]
        if height < crop_h or width < crop_w:
            raise ValueError(f"Frames of {height}x{width} are smaller than crop_size {crop_h}x{crop_w}")
        crops = []
        for fraction in (0.0, 0.5, 1.0):
            top = int(round((height - crop_h) * fraction)) if height >= width else (height - crop_h) // 2
            left = int(round((width - crop_w) * fraction)) if width > height else (width - crop_w) // 2
            crops.append(clip[..., top : top + crop_h, left : left + crop_w])
        return crops


__all__ = ["FlorenceVideoProcessor", "count_frames", "decode_video", "frame_to_array"]
