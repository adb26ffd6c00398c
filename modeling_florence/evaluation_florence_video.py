# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Zero-shot action recognition and text-video retrieval for [`FlorenceVideoModel`], next to the image ones.

Clips are encoded view by view (`num_clips` x `num_crops` views from the video processor, their L2-normalised
features averaged per video); class prompts are template ensembles through the text tower, as for images.

Multi-view testing of a classifier with `transformers.Trainer`: :func:`preprocess_videos` turns videos into
`num_clips x num_crops` views each, :class:`VideoViewsDataset` yields one item per video (its views stacked), and
:class:`VideoViewsCollator` flattens a batch of videos into `(B * views, T, C, H, W)` clips with `num_views`, so
`FlorenceForVideoClassification` averages each video's class probabilities before the loss and the metrics.
"""

from dataclasses import dataclass

import torch

from .evaluation_florence import TopKAccuracy, encode_texts, retrieval_recall, zero_shot_classifier

VIDEO_TEMPLATES = ("a video of {}.", "a clip of {}.", "{}", "a video of a shape {}.", "a shape {}.")


@torch.no_grad()
def encode_videos(model, videos, processor=None, num_clips: int = 1, num_crops: int = 1,
                  batch_size: int = 32) -> torch.Tensor:
    """L2-normalised projected video features `(N, D)`.

    `videos`: a `(N, T, C, H, W)` tensor of preprocessed clips, or raw videos (paths, frame lists) that `processor`
    (a `FlorenceProcessor` or `FlorenceVideoProcessor`) turns into `num_clips x num_crops` views each."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    video_processor = getattr(processor, "video_processor", processor)
    features = []
    for start in range(0, len(videos), batch_size):
        chunk = videos[start : start + batch_size]
        if isinstance(chunk, torch.Tensor):
            pixel_values, views = chunk, 1
        else:
            inputs = video_processor(list(chunk), num_clips=num_clips, num_crops=num_crops)
            pixel_values, views = inputs["pixel_values_videos"], inputs["num_views"]
        features.append(model.get_video_features(pixel_values.to(device, dtype), num_views=views).pooler_output.float())
    return torch.nn.functional.normalize(torch.cat(features), dim=-1)


def preprocess_videos(video_processor, videos, num_clips: int = 1, num_crops: int = 1,
                      batch_size: int = 64) -> torch.Tensor:
    """`(N * views, T, C, H, W)` clips of `N` videos (paths, frame lists or arrays) through the video processor, in
    chunks, ordered video-major (video 0's `num_clips x num_crops` views first) as `FlorenceVideoProcessor` returns
    them."""
    video_processor = getattr(video_processor, "video_processor", video_processor)
    chunks = []
    for start in range(0, len(videos), batch_size):
        chunk = list(videos[start : start + batch_size])
        chunks.append(video_processor(chunk, num_clips=num_clips, num_crops=num_crops)["pixel_values_videos"])
    return torch.cat(chunks)


class VideoViewsDataset(torch.utils.data.Dataset):
    """Preprocessed clips grouped by video: item `i` is `{"pixel_values": (views, T, C, H, W), "labels": label}`.

    `pixel_values_videos` holds `len(labels) * num_views` clips ordered video-major (:func:`preprocess_videos`);
    `num_views=1` is the plain one-clip-per-video dataset used for training."""

    def __init__(self, pixel_values_videos: torch.Tensor, labels, num_views: int = 1):
        labels = torch.as_tensor(labels, dtype=torch.long)
        if num_views < 1 or len(pixel_values_videos) != len(labels) * num_views:
            raise ValueError(f"{len(pixel_values_videos)} clips are not {num_views} view(s) of {len(labels)} videos")
        self.pixel_values = pixel_values_videos.view(len(labels), num_views, *pixel_values_videos.shape[1:])
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


@dataclass
class VideoViewsCollator:
    """Videos of :class:`VideoViewsDataset` -> `labels (B,)`, `pixel_values (B * views, T, C, H, W)` (video-major)
    and, with more than one view, `num_views`: `FlorenceForVideoClassification` then returns one row of logits per
    video (the log of its views' mean probabilities), which `Trainer`'s loss, predictions and `compute_metrics` use.

    `labels` come first so `Trainer` counts videos, not clips, as the batch size."""

    def __call__(self, examples: list[dict]) -> dict:
        views = examples[0]["pixel_values"].shape[0]
        if any(example["pixel_values"].shape[0] != views for example in examples):
            raise ValueError("All videos of a batch must have the same number of views")
        batch = {"labels": torch.stack([torch.as_tensor(example["labels"]) for example in examples]).long(),
                 "pixel_values": torch.cat([example["pixel_values"] for example in examples])}
        if views > 1:
            batch["num_views"] = views
        return batch


def zero_shot_video_classification(model, processor, videos, labels, class_names, templates=VIDEO_TEMPLATES,
                                   num_clips: int = 1, num_crops: int = 1) -> dict[str, float]:
    """Top-1/top-5 zero-shot action accuracy (%) of `videos` against prompts built from `class_names`."""
    classifier = zero_shot_classifier(model, processor, list(class_names), list(templates))
    logits = encode_videos(model, videos, processor, num_clips, num_crops) @ classifier.t()
    ks = (1, 5) if len(class_names) >= 5 else (1,)
    return TopKAccuracy(keep_in_memory=True).compute(predictions=logits.tolist(), references=list(labels), ks=ks)


def video_text_retrieval(model, processor, videos, texts, num_clips: int = 1, num_crops: int = 1) -> dict[str, float]:
    """R@1/5/10 (%) both ways (`v2t_*`, `t2v_*`) over video-caption pairs with distinct captions."""
    if len(set(texts)) != len(texts):
        raise ValueError("Retrieval pairs must have distinct captions; deduplicate them first")
    recall = retrieval_recall(encode_videos(model, videos, processor, num_clips, num_crops),
                              encode_texts(model, processor, list(texts)))
    return {name.replace("i2t", "v2t").replace("t2i", "t2v"): value for name, value in recall.items()}


__all__ = [
    "VIDEO_TEMPLATES",
    "VideoViewsCollator",
    "VideoViewsDataset",
    "encode_videos",
    "preprocess_videos",
    "video_text_retrieval",
    "zero_shot_video_classification",
]
