# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Video processor for Florence: decode (PyAV), sample frames, then the CLIP-style per-frame transforms.

Returns `pixel_values_videos` of shape `(B * views, T, C, H, W)`. Sampling is uniform over the clip
(`frame_stride=None`) or every `frame_stride`-th frame from a centred window; a clip shorter than `num_frames` is
padded by repeating frames (uniform sampling repeats the nearest frames, strided sampling the last one), so every
output has exactly `num_frames` frames. Test-time views follow Video Swin: `num_clips` temporal clips spread over the
video times `num_crops` spatial crops (1: centre; 3: start, centre and end of the longer side), ordered video-major
(video 0's views first), with `num_views` in the output so scores can be averaged back per video.
"""

from pathlib import Path

import numpy as np
import torch
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.video_processing_utils import BaseVideoProcessor

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".gif")


def decode_video(path: str | Path) -> np.ndarray:
    """All frames of a video file as `(T, H, W, 3)` uint8, via PyAV (the `video` extra)."""
    try:
        import av
    except ImportError as error:
        raise ImportError("Decoding video files needs PyAV: `pip install av` (or the `video` extra)") from error
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Video file {path} does not exist")
    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except Exception as error:  # noqa: BLE001 - PyAV raises many error types for unreadable input
        raise ValueError(f"Could not decode video file {path}: {error}") from error
    if not frames:
        raise ValueError(f"Video file {path} holds no decodable video frames")
    return np.stack(frames)


def to_frame_array(video) -> np.ndarray | torch.Tensor:
    """A path, a list of PIL frames, `(T, H, W, C)` or `(T, C, H, W)` arrays -> one stack of frames."""
    if isinstance(video, (str, Path)):
        return decode_video(video)
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError("A video must have at least one frame, got an empty list")
        return np.stack([np.asarray(frame.convert("RGB") if hasattr(frame, "convert") else frame) for frame in video])
    if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 4 and video.shape[0] > 0:
        return video
    raise ValueError(
        "Each video must be a file path, a list of frames, or a 4-D (frames, height, width, channels) array, got "
        f"{type(video).__name__} with shape {getattr(video, 'shape', None)}"
    )


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


class FlorenceVideoProcessor(BaseVideoProcessor):
    """Decoding, frame sampling (uniform or strided), multi-clip/multi-crop views, and CLIP-style normalisation."""

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 224}
    crop_size = {"height": 224, "width": 224}
    default_to_square = False
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = False  # sampling happens here, before the per-frame transforms
    num_frames = 8
    model_input_names = ["pixel_values_videos"]

    def __init__(self, num_frames: int = 8, frame_stride: int | None = None, **kwargs):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if frame_stride is not None and frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1 or None (uniform sampling), got {frame_stride}")
        super().__init__(**kwargs)
        self.num_frames = num_frames
        self.frame_stride = frame_stride

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

    def __call__(self, videos, num_clips: int = 1, num_crops: int = 1, **kwargs):
        if num_clips < 1 or num_crops not in (1, 3):
            raise ValueError(f"num_clips must be >= 1 and num_crops 1 or 3, got {num_clips} and {num_crops}")
        single = isinstance(videos, (str, Path)) or (
            isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 4
        ) or (isinstance(videos, list) and videos and hasattr(videos[0], "convert"))
        videos = [videos] if single else list(videos)
        # Sampling happens here (`clip_indices`); the video-classification pipeline still passes these two.
        kwargs.pop("do_sample_frames", None)
        kwargs.pop("num_frames", None)
        clips = []
        for video in videos:
            frames = to_frame_array(video)
            clips.extend(frames[torch.as_tensor(indices) if isinstance(frames, torch.Tensor) else indices]
                         for indices in self.clip_indices(len(frames), num_clips))
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


__all__ = ["FlorenceVideoProcessor", "decode_video"]
