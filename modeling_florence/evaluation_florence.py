# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Zero-shot classification with prompt-template ensembles, and image-text retrieval recall, for FlorenceModel.

Templates are data (a JSON list of strings with one `{}`), so they can be swapped per data set; the default set is
`configuration/zero_shot_templates.json`. Class embeddings are the renormalised mean of the normalised template
embeddings, as in CLIP and UniCL. Zero-shot accuracy is an `evaluate` metric (`TopKAccuracy`), defined here rather
than loaded with `evaluate.load("accuracy")`, which fetches its script from the Hub and so fails offline.
"""

import datasets
import evaluate
import torch

from .zero_shot_florence import encode_texts, load_templates, zero_shot_classifier  # noqa: F401  (re-exported)


@torch.no_grad()
def encode_images(model, processor, images: list, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised projected image features `(N, D)`."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    features = []
    for start in range(0, len(images), batch_size):
        pixel_values = processor(images=images[start : start + batch_size])["pixel_values"]
        features.append(model.get_image_features(pixel_values.to(device, dtype)).pooler_output)
    return torch.nn.functional.normalize(torch.cat(features).float(), dim=-1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Percent of rows whose label is among the k highest logits."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions for {labels.shape[0]} labels")
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}


class TopKAccuracy(evaluate.Metric):
    """Top-k accuracy (%) as an `evaluate` metric: `compute(predictions=scores (N, C), references=ids (N,), ks=(1, 5))`.

    Works offline and composes with `evaluate.combine` and `add_batch` like the Hub's metrics."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Percent of examples whose reference class is among the k highest-scoring classes.",
            citation="",
            inputs_description="predictions: one list of per-class scores per example; references: class ids.",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, ks=(1, 5)) -> dict[str, float]:
        return topk_accuracy(torch.tensor(predictions), torch.tensor(references), ks)


def zero_shot_classification(model, processor, images, labels, class_names, templates=None) -> dict[str, float]:
    """Top-1/top-5 zero-shot accuracy (%) of `images` against prompts built from `class_names`."""
    templates = templates if templates is not None else load_templates()
    classifier = zero_shot_classifier(model, processor, class_names, templates)
    logits = encode_images(model, processor, images) @ classifier.t()
    return TopKAccuracy(keep_in_memory=True).compute(predictions=logits.tolist(), references=list(labels), ks=(1, 5))


def retrieval_recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K (%) for one-to-one pairs (row i of each is a pair): image->text and text->image."""
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(f"Retrieval needs as many texts as images, got {text_embeds.shape[0]} and {image_embeds.shape[0]}")
    similarity = image_embeds @ text_embeds.t()
    target = torch.arange(similarity.shape[0])
    results = {}
    for name, scores in (("i2t", similarity), ("t2i", similarity.t())):
        for k, value in topk_accuracy(scores, target, ks).items():
            results[f"{name}_R@{k[3:]}"] = value
    return results


def image_text_retrieval(model, processor, images, texts) -> dict[str, float]:
    """R@1/5/10 both ways over pairs with distinct texts (duplicates would make the target ambiguous)."""
    if len(set(texts)) != len(texts):
        raise ValueError("Retrieval pairs must have distinct texts; deduplicate them first")
    return retrieval_recall(encode_images(model, processor, images), encode_texts(model, processor, list(texts)))


def format_table(results: dict[str, float]) -> str:
    width = max(len(name) for name in results)
    lines = [f"{'metric':<{width}} | value", f"{'-' * width}-|-------"]
    lines += [f"{name:<{width}} | {value:6.2f}" for name, value in results.items()]
    return "\n".join(lines)


__all__ = [
    "TopKAccuracy",
    "encode_images",
    "encode_texts",
    "format_table",
    "image_text_retrieval",
    "load_templates",
    "retrieval_recall",
    "topk_accuracy",
    "zero_shot_classification",
    "zero_shot_classifier",
]
