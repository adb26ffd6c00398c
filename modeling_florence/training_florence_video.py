# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Video fine-tuning pieces (used by `examples/finetune_video.py`): the data (Florence Shapes video or a folder of
videos with a labels csv), the video-text (UniCL) dataset, the multi-view dataset and collator (from
`evaluation_florence_video`), the classifier built on a video tower, and `compute_metrics`."""

from pathlib import Path

import torch

from .evaluation_florence import TopKAccuracy
from .evaluation_florence_video import VideoViewsCollator, VideoViewsDataset, preprocess_videos
from .processing_florence import text_labels
from .training_florence import training_arguments


class VideoTextDataset(torch.utils.data.Dataset):
    """Preprocessed clips with tokenised captions and UniCL labels (equal captions are positives)."""

    def __init__(self, pixel_values, text_inputs, captions):
        self.pixel_values, self.text_inputs, self.labels = pixel_values, text_inputs, text_labels(captions)

    def __len__(self):
        return len(self.pixel_values)

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "input_ids": self.text_inputs["input_ids"][index],
                "attention_mask": self.text_inputs["attention_mask"][index], "labels": self.labels[index]}


def shapes_video_data(num_train: int, num_test: int, image_size: int, num_frames: int, seed: int = 0):
    """`({"train"|"test": {"videos", "labels", "captions"}}, class names)` from Florence Shapes video."""
    from .shapes import ACTIONS, build_video

    data = build_video(num_train=num_train, num_validation=0, num_test=num_test, image_size=image_size,
                       num_frames=num_frames, seed=seed)
    splits = {name: {"videos": data[name]["frames"], "labels": data[name]["label"],
                     "captions": data[name]["caption"]} for name in ("train", "test")}
    return splits, list(ACTIONS)


def folder_video_data(video_folder, labels_csv, test_csv=None, test_fraction: float = 0.2, seed: int = 0):
    """`({"train"|"test": {"videos", "labels", "captions"}}, class names)` from a folder of videos and a labels csv
    (held out: `test_csv`, whose labels must all be training labels, else a random `test_fraction`)."""
    from .data_florence import load_video_folder

    if not video_folder or not labels_csv:
        raise ValueError("folder data needs a video folder (--video-folder) and a labels csv (--labels-csv)")
    train = load_video_folder(video_folder, labels_csv)
    names = train.features["label"].names
    if test_csv:
        test = load_video_folder(video_folder, test_csv)
        unknown = sorted(set(test.features["label"].names) - set(names))
        if unknown:
            raise ValueError(f"{test_csv} has labels the training csv lacks: {unknown}")
        test_names = test.features["label"].names
        test_labels = [names.index(test_names[label]) for label in test["label"]]
    else:
        split = train.train_test_split(test_size=test_fraction, seed=seed)
        train, test = split["train"], split["test"]
        test_labels = test["label"]
    splits = {"train": {"videos": train["video"], "labels": train["label"], "captions": train["caption"]},
              "test": {"videos": test["video"], "labels": test_labels, "captions": test["caption"]}}
    return splits, names


def video_training_arguments(output: Path, batch_size: int, epochs: float, learning_rate: float, seed: int = 0,
                             eval_batch_size: int = 8):
    """`TrainingArguments` of both video stages (no checkpoints, cosine schedule, the shared quiet defaults)."""
    return training_arguments(
        output, per_device_train_batch_size=batch_size, per_device_eval_batch_size=eval_batch_size,
        num_train_epochs=epochs, learning_rate=learning_rate, weight_decay=0.05, warmup_steps=0.1,
        lr_scheduler_type="cosine", logging_steps=10, save_strategy="no", eval_strategy="no", use_cpu=True, seed=seed,
        max_grad_norm=1.0, disable_tqdm=True, label_names=["labels"],
    )


def video_classifier(model, class_names: list[str]):
    """`FlorenceForVideoClassification` whose tower is `model`'s (a `FlorenceVideoModel`), labelled `class_names`."""
    from .configuration_florence_video import FlorenceVideoConfig
    from .modeling_florence_video import FlorenceForVideoClassification

    config = FlorenceVideoConfig(vision_config=model.config.vision_config.to_dict(),
                                 id2label=dict(enumerate(class_names)),
                                 label2id={name: index for index, name in enumerate(class_names)})
    classifier = FlorenceForVideoClassification(config)
    classifier.vision_model.load_state_dict(model.vision_model.state_dict())
    return classifier


def accuracy_metric(num_classes: int):
    """`compute_metrics` for `Trainer`: top-1 (and top-5 with at least 5 classes) accuracy (%) of per-video logits."""
    ks = (1, 5) if num_classes >= 5 else (1,)

    def compute(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        return TopKAccuracy(keep_in_memory=True).compute(
            predictions=logits.tolist(), references=eval_prediction.label_ids.tolist(), ks=ks)

    return compute


__all__ = ["VideoTextDataset", "VideoViewsCollator", "VideoViewsDataset", "accuracy_metric", "folder_video_data",
           "preprocess_videos", "shapes_video_data", "video_classifier", "video_training_arguments"]
