# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Zero-shot action recognition and text-video retrieval for [`FlorenceVideoModel`], next to the image ones.

Clips are encoded view by view (`num_clips` x `num_crops` views from the video processor, their L2-normalised
features averaged per video); class prompts are template ensembles through the text tower, as for images.
"""

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


__all__ = ["VIDEO_TEMPLATES", "encode_videos", "video_text_retrieval", "zero_shot_video_classification"]
