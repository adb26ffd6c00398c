# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""VQA fine-tuning pieces for `FlorenceForVQA` with `transformers.Trainer` (used by `examples/finetune_vqa.py`):
data, whole-split preprocessing, the frozen-image-tower feature cache and its collator, the MLM collator of fusion
pretraining, the per-tower optimizer groups, `compute_metrics` (official VQA accuracy) and the blind baseline."""

from collections import Counter, defaultdict

import numpy as np
import torch

from .evaluation_florence_vqa import VQAAccuracy
from .processing_florence_vqa import mask_tokens, normalize_answer
from .training_florence import grouped_adamw

FUSION_FIELDS = ("hidden_size", "num_fusion_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                 "hidden_dropout_prob", "attention_probs_dropout_prob", "vision_feature_stages",
                 "image_position_embeddings")


class TensorDataset(torch.utils.data.Dataset):
    """Pre-processed examples (tensors of equal shapes), served as dicts the default collator stacks."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        self.columns = columns

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.columns.items()}


def vqa_data(data: str, num_train: int, num_test: int, image_size: int = 96, seed: int = 0, questions=None,
             annotations=None, images=None, split: str = "val2014"):
    """(train, test) datasets with `image`, `question`, `question_type`, `answers` columns: Florence Shapes VQA, or
    VQAv2 files (`questions`, `annotations`, `images`) split at random into `num_test` held-out questions."""
    if data == "shapes":
        from .shapes import build_vqa

        splits = build_vqa(num_train=num_train, num_validation=0, num_test=num_test, image_size=image_size, seed=seed)
        return splits["train"], splits["test"]
    if data != "vqav2":
        raise ValueError(f"data must be 'shapes' or 'vqav2', got {data!r}")
    if not (questions and annotations and images):
        raise ValueError("VQAv2 data needs the questions file, the annotations file and the images folder")
    from .data_florence import load_vqav2

    full = load_vqav2(questions, annotations, images, split=split)
    halves = full.train_test_split(test_size=num_test, seed=seed)
    return halves["train"], halves["test"]


def preprocess(dataset, processor, max_length: int = 32, batch_size: int = 256) -> TensorDataset:
    """Images, questions (padded to one length) and soft labels of a whole split, processed once."""
    columns = defaultdict(list)
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        out = processor(text=rows["question"], images=rows["image"], answers=rows["answers"], padding="max_length",
                        max_length=max_length)
        out["pixel_values"] = out["pixel_values"].half()  # half the memory; the image tower casts to its dtype
        for key in ("pixel_values", "input_ids", "attention_mask", "labels"):
            columns[key].append(out[key])
    return TensorDataset({key: torch.cat(values) for key, values in columns.items()})


def trim_padding(*datasets: TensorDataset) -> tuple[TensorDataset, ...]:
    """Drop the padding columns no question of any split uses (fewer text tokens, faster fusion)."""
    length = max(int(dataset.columns["attention_mask"].sum(1).max()) for dataset in datasets)
    for dataset in datasets:
        for key in ("input_ids", "attention_mask"):
            dataset.columns[key] = dataset.columns[key][:, :length]
    return datasets


@torch.no_grad()
def cache_image_features(model, *datasets: TensorDataset, batch_size: int = 256) -> None:
    """Frozen image tower: replace each split's `pixel_values` by the tower's output (`image_hidden_states`: the
    tokens of every `vision_feature_stages` entry), computed once, so training steps run the text tower, fusion and
    head only. Several stages are stored as columns `image_hidden_states.<i>`, reassembled by `feature_collator`."""
    model.vision_model.requires_grad_(False).eval()
    for dataset in datasets:
        pixels, features = dataset.columns.pop("pixel_values"), []
        for start in range(0, len(pixels), batch_size):
            output = model.get_image_hidden_states(pixels[start : start + batch_size].float())
            features.append([output] if isinstance(output, torch.Tensor) else list(output))
        for stage, stage_features in enumerate(zip(*features)):
            dataset.columns[f"image_hidden_states.{stage}"] = torch.cat(stage_features).half()


def feature_collator(rows: list[dict]) -> dict:
    """Stacks rows; the cached stage features (`image_hidden_states.<i>`) become one `image_hidden_states` tuple."""
    batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
    stages = sorted((key for key in batch if key.startswith("image_hidden_states.")),
                    key=lambda key: int(key.rsplit(".")[1]))
    if stages:
        batch["image_hidden_states"] = tuple(batch.pop(key) for key in stages)
    return batch


class MLMCollator:
    """Stacks pairs and masks their texts for MLM (the CLIP vocabulary has no mask token: `mask_token_id` stands in)."""

    def __init__(self, mask_token_id: int, vocab_size: int, special_ids):
        self.mask_token_id, self.vocab_size, self.special_ids = mask_token_id, vocab_size, tuple(special_ids)

    def __call__(self, rows):
        batch = {key: torch.stack([row[key] for row in rows]) for key in ("pixel_values", "input_ids", "attention_mask")}
        batch["input_ids"], batch["mlm_labels"] = mask_tokens(
            batch["input_ids"], batch["attention_mask"], self.mask_token_id, self.vocab_size, self.special_ids
        )
        return batch


def optimizer_for(model, learning_rate: float, tower_lr_scale: float, image_tower_lr_scale: float | None = None,
                  weight_decay: float = 0.01):
    """AdamW with the pretrained towers at `tower_lr_scale` x the learning rate of the new fusion layers and head
    (METER trains its heads and fusion faster than the unimodal encoders; `image_tower_lr_scale`, when given, for the
    image tower alone); no decay on biases and norms; the fused kernel where the device has one. Negative or
    non-finite rates and scales are refused."""
    scales = {"vision_model.": tower_lr_scale if image_tower_lr_scale is None else image_tower_lr_scale,
              "text_model.": tower_lr_scale}
    return grouped_adamw(model, learning_rate, scales, weight_decay=weight_decay)


def blind_baseline(train, test) -> dict[str, float]:
    """Accuracy of answering every question with its most frequent training answer (unseen questions: the most
    frequent answer of the question type): what a question-only model converges to at best."""
    per_question, per_type = defaultdict(Counter), defaultdict(Counter)
    for question, kind, answers in zip(train["question"], train["question_type"], train["answers"]):
        per_question[question].update(normalize_answer(a) for a in answers)
        per_type[kind].update(normalize_answer(a) for a in answers)
    predictions = [
        (per_question.get(q) or per_type[k]).most_common(1)[0][0] for q, k in zip(test["question"], test["question_type"])
    ]
    return VQAAccuracy(keep_in_memory=True).compute(
        predictions=predictions, references=test["answers"], question_types=test["question_type"]
    )


def make_compute_metrics(test, vocabulary):
    """`compute_metrics` for `Trainer`: official VQA accuracy (overall and per question type) of the argmax answers."""

    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        answers = [vocabulary[i] for i in np.asarray(logits).argmax(-1)]
        return VQAAccuracy(keep_in_memory=True).compute(
            predictions=answers, references=test["answers"], question_types=test["question_type"]
        )

    return compute_metrics


def attention_kernels(requested: str | None) -> str:
    """The attention implementation: the requested one, else sdpa on a GPU and eager on CPU (torch's sdpa kernels are
    ~1.8x slower on the fusion's short bf16 sequences there)."""
    return requested or ("sdpa" if torch.cuda.is_available() else "eager")


__all__ = ["FUSION_FIELDS", "MLMCollator", "TensorDataset", "attention_kernels", "blind_baseline",
           "cache_image_features", "feature_collator", "make_compute_metrics", "optimizer_for", "preprocess",
           "trim_padding", "vqa_data"]
