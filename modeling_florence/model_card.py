# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Hub model cards (`README.md` with metadata) for every folder the project writes.

Architecture facts come from the folder's `config.json` and weights, evaluation figures only from the run's own
results (a dict or an `eval_results.json`), so a card never claims what was not measured. The metadata is built
with `huggingface_hub.ModelCardData`, so `model-index` follows the Hub's schema.
"""

import json
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

# The pipeline each model class serves (the Hub's `pipeline_tag`), by architecture name.
PIPELINE_TAGS = {
    "FlorenceModel": "zero-shot-image-classification",
    "FlorenceVisionModel": "image-feature-extraction",
    "FlorenceVisionBackbone": "image-feature-extraction",
    "FlorenceTextModel": "feature-extraction",
    "FlorenceForImageClassification": "image-classification",
    "FlorenceForObjectDetection": "object-detection",
    "FlorenceForVQA": "visual-question-answering",
    "FlorenceFusionModel": "feature-extraction",
    "FlorenceForVisionLanguagePretraining": "feature-extraction",
    "FlorenceVideoModel": "video-classification",
    "FlorenceVideoVisionModel": "feature-extraction",
    "FlorenceFusionModel": "feature-extraction",
    "FlorenceForVisionLanguagePretraining": "feature-extraction",
    "FlorenceForVideoClassification": "video-classification",
    "FlorenceForConditionalGeneration": "image-text-to-text",
    "FlorenceGenerationModel": "feature-extraction",
    "FlorenceDaViTBackbone": "image-feature-extraction",
}
DEFAULT_DATASET = "florence-shapes"
# Numbers a run records that describe the evaluation or the run (how many classes, pairs, parameters, seconds), not
# how well the model does: shown in the card's "Evaluation setup", never published as `model-index` metrics.
COUNT_NAMES = re.compile(r"(^|/)(classes|retrieval_pairs|pairs|images|videos|questions|samples|examples|steps|epochs"
                         r"|num_\w+|\w*_parameters|\w*_seconds|\w*_bytes|\w*_count|trainable_fraction)$")
# The starting point's figures (`before/...`, `step0_...`) and training logs (`losses/...`): not this model's metrics.
BASELINE_NAMES = re.compile(r"^(before/|step0_)")
LOG_NAMES = re.compile(r"^(losses|log_history)/")
CITATION = """@article{yuan2021florence,
  title   = {Florence: A New Foundation Model for Computer Vision},
  author  = {Yuan, Lu and Chen, Dongdong and Chen, Yi-Ling and others},
  journal = {arXiv preprint arXiv:2111.11432},
  year    = {2021}
}"""


def _architecture(config: dict) -> str:
    architectures = config.get("architectures") or []
    if not architectures or architectures[0] not in PIPELINE_TAGS:
        raise ValueError(
            f"config.json names architectures {architectures}, not one of the Florence model classes "
            f"{sorted(PIPELINE_TAGS)}"
        )
    return architectures[0]


def count_parameters(folder: Path) -> int:
    """Parameters stored in the folder's safetensors files (read from their headers, no tensor loaded)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():
                shape = weights.get_slice(key).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_results(results: dict | str | Path | None) -> dict[str, float]:
    """Numeric results as a flat `{metric: value}`, from a dict or a JSON file (nested keys joined with `/`)."""
    if results is None:
        return {}
    if not isinstance(results, dict):
        results = json.loads(Path(results).read_text())
    return {key: float(value) for key, value in _flatten(results).items() if isinstance(value, (int, float))}


def split_results(results: dict | str | Path | None) -> tuple[dict[str, float], dict[str, float]]:
    """`(metrics, setup)`: what the model measured (published in `model-index`), and the counts and starting-point
    figures that describe the evaluation (shown in the card only); training logs are left out."""
    metrics, setup = {}, {}
    for name, value in load_results(results).items():
        if LOG_NAMES.search(name):
            continue
        (setup if COUNT_NAMES.search(name) or BASELINE_NAMES.search(name) else metrics)[name] = value
    return metrics, setup


def _results_text(metrics: dict[str, float], setup: dict[str, float]) -> str:
    text = ("| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v:.2f} |" for k, v in metrics.items())
            if metrics else "No evaluation results were supplied for this checkpoint.")
    if setup:
        rows = "\n".join(f"| {k} | {int(v) if float(v).is_integer() else f'{v:.4g}'} |" for k, v in setup.items())
        text += f"\n\nEvaluation setup (counts and the starting point's figures, not metrics):\n\n| | |\n|---|---|\n{rows}"
    return text


def _describe(config: dict) -> list[tuple[str, str]]:
    vision = config.get("vision_config") or config.get("backbone_config") or (
        config if "embed_dim" in config and "depths" in config else None
    )
    text = config.get("text_config") or (config if config.get("model_type") == "florence_text" else None)
    rows = []
    if vision:
        kind = "CoSwin (CvT convolutional embeddings)" if vision.get("patch_embed") == "conv" else "Swin (linear patches)"
        rows.append(("image tower", f"{kind}, embed_dim {vision.get('embed_dim')}, depths {vision.get('depths')}, "
                                    f"heads {vision.get('num_heads')}, window {vision.get('window_size')}"))
        rows.append(("training resolution", f"{vision.get('image_size')} px"))
    if text:
        rows.append(("text tower", f"width {text.get('hidden_size')}, {text.get('num_hidden_layers')} layers, "
                                   f"{text.get('num_attention_heads')} heads"))
    if config.get("model_type") == "florence_vqa":
        rows.append(("fusion", f"METER co-attention, {config.get('num_fusion_layers')} layers per stream, width "
                               f"{config.get('hidden_size')}, {config.get('num_attention_heads')} heads"))
    if config.get("id2label"):
        rows.append(("labels", str(len(config["id2label"]))))
    return rows


def build_model_card(
    folder: str | Path,
    *,
    model_name: str | None = None,
    results: dict | str | Path | None = None,
    datasets: list[str] | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    description: str | None = None,
    remote_code: bool = False,
) -> ModelCard:
    """The card of a saved model folder. `remote_code=True` shows loading with `trust_remote_code` (Hub exports)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    architecture = _architecture(config)
    pipeline_tag = PIPELINE_TAGS[architecture]
    model_name = model_name or folder.name
    datasets = datasets or [DEFAULT_DATASET]
    metrics, setup = split_results(results)
    eval_results = [
        EvalResult(
            task_type=pipeline_tag, dataset_type=datasets[0], dataset_name=datasets[0], metric_type=name,
            metric_name=name, metric_value=value,
        )
        for name, value in metrics.items()
    ]
    data = ModelCardData(
        library_name="transformers",
        license=license,
        pipeline_tag=pipeline_tag,
        tags=["florence", "coswin", "unicl", config.get("model_type", "florence")],
        datasets=datasets,
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    parameters = count_parameters(folder)
    rows = [("architecture", f"`{architecture}` (model type `{config.get('model_type')}`)"),
            *_describe(config), ("parameters", f"{parameters / 1e6:.1f}M"), ("weights", "safetensors")]
    details = "| | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows)
    evaluation = _results_text(metrics, setup)
    loading = (
        f'model = AutoModel.from_pretrained("{model_name}", trust_remote_code=True)  # no extra package needed'
        if remote_code
        else f'import modeling_florence  # registers the Florence model types\nmodel = AutoModel.from_pretrained("{model_name}")'
    )
    body = f"""
# {model_name}

{description or "A Florence model (CoSwin image encoder, CLIP-style text encoder, UniCL; Yuan et al., 2021) from the Florence for Transformers library."}

## Model details

{details}
{f"{chr(10)}Converted from `{base_model}`.{chr(10)}" if base_model else ""}
## How to use

```python
from transformers import AutoModel, pipeline
{loading}
```

## Evaluation

{evaluation}

## Limitations

Florence's original weights were never released; this checkpoint was trained or converted with this library, and the
evaluation section lists only what was measured on the data named there.

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_model_card(folder: str | Path, **kwargs) -> Path:
    """Write `README.md` into `folder` (see :func:`build_model_card` for the arguments)."""
    path = Path(folder) / "README.md"
    build_model_card(folder, **kwargs).save(path)
    return path


def build_adapter_card(
    folder: str | Path,
    *,
    base_model: str | None = None,
    results: dict | str | Path | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    description: str | None = None,
    model_name: str | None = None,
) -> ModelCard:
    """The card of a PEFT adapter folder (`adapter_config.json`): its base model, the LoRA settings, how to load it,
    and the run's results; replaces PEFT's empty template."""
    folder = Path(folder)
    adapter = json.loads((folder / "adapter_config.json").read_text())
    base_model = base_model or adapter.get("base_model_name_or_path")
    if not base_model:
        raise ValueError(f"{folder}: name the base model (base_model=...): adapter_config.json does not record it")
    base_config = Path(base_model) / "config.json"
    architecture = None
    if base_config.is_file():
        architecture = _architecture(json.loads(base_config.read_text()))
    pipeline_tag = PIPELINE_TAGS.get(architecture) if architecture else None
    datasets = datasets or [DEFAULT_DATASET]
    metrics, setup = split_results(results)
    eval_results = [EvalResult(task_type=pipeline_tag or "other", dataset_type=datasets[0], dataset_name=datasets[0],
                               metric_type=name, metric_name=name, metric_value=value)
                    for name, value in metrics.items()]
    data = ModelCardData(library_name="peft", license=license, pipeline_tag=pipeline_tag, base_model=base_model,
                         tags=["florence", "lora", "peft"], datasets=datasets, model_name=model_name or folder.name,
                         eval_results=eval_results or None)
    targets = adapter.get("target_modules")
    targets = targets if isinstance(targets, str) else ", ".join(sorted(targets or []))
    rows = [("adapter", f"{adapter.get('peft_type', 'LORA')} r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}, "
                        f"dropout={adapter.get('lora_dropout')}"),
            ("target modules", targets), ("trained in full", ", ".join(adapter.get("modules_to_save") or []) or "-"),
            ("base model", f"`{base_model}`" + (f" (`{architecture}`)" if architecture else "")),
            ("adapter parameters", f"{count_parameters(folder) / 1e6:.2f}M")]
    details = "| | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows)
    body = f"""
# {model_name or folder.name}

{description or "A LoRA adapter for a Florence model (Florence for Transformers), trained with PEFT."}

## Adapter details

{details}

## How to use

```python
import modeling_florence  # registers the Florence model types
from peft import PeftModel
from transformers import AutoModel
model = PeftModel.from_pretrained(AutoModel.from_pretrained("{base_model}"), "{model_name or folder.name}")
```

## Evaluation

{_results_text(metrics, setup)}

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_finetune_card(folder: str | Path, results: dict | None = None, base_model: str | None = None,
                        description: str | None = None, **kwargs) -> Path:
    """The card of a fine-tuning run's output: an adapter card for a PEFT adapter folder, else the model's card."""
    folder = Path(folder)
    path = folder / "README.md"
    if (folder / "adapter_config.json").is_file():
        build_adapter_card(folder, base_model=base_model, results=results, description=description,
                           **kwargs).save(path)
        return path
    return write_model_card(folder, results=results, base_model=base_model, description=description, **kwargs)


__all__ = ["PIPELINE_TAGS", "build_adapter_card", "build_model_card", "load_results", "split_results",
           "write_finetune_card", "write_model_card"]
