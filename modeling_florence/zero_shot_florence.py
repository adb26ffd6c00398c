# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Zero-shot class embeddings from prompt-template ensembles (CLIP, UniCL): the templates and the renormalised mean of
the normalised template embeddings. Shipped with exported classifier folders (`FlorenceForImageClassification.
from_florence` builds its head with them), so it imports only torch and the package's configuration module; the
metrics and data sets that use it (`evaluation_florence`) stay on the training side."""

import json
from pathlib import Path

import torch

from .configuration_florence import presets_dir


def load_templates(path: str | Path | None = None) -> list[str]:
    """Prompt templates from a JSON list (default: the shipped `zero_shot_templates.json`)."""
    path = Path(path) if path is not None else presets_dir() / "zero_shot_templates.json"
    templates = json.loads(Path(path).read_text())
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ValueError(f"{path} must hold a non-empty JSON list of strings, each with one '{{}}' for the class name")
    return templates


@torch.no_grad()
def encode_texts(model, processor, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised projected text features `(N, D)`."""
    device = next(model.parameters()).device
    features = []
    for start in range(0, len(texts), batch_size):
        inputs = processor(text=texts[start : start + batch_size])
        text_inputs = {key: inputs[key].to(device) for key in ("input_ids", "attention_mask")}
        features.append(model.get_text_features(**text_inputs).pooler_output)
    return torch.nn.functional.normalize(torch.cat(features).float(), dim=-1)


@torch.no_grad()
def zero_shot_classifier(model, processor, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """`(classes, D)` class embeddings: each the renormalised mean over templates."""
    prompts = [template.format(name) for name in class_names for template in templates]
    embeddings = encode_texts(model, processor, prompts).view(len(class_names), len(templates), -1)
    return torch.nn.functional.normalize(embeddings.mean(dim=1), dim=-1)


__all__ = ["encode_texts", "load_templates", "zero_shot_classifier"]
