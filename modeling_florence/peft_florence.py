# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""LoRA defaults for every Florence model, with errors that name the problem.

Every Florence model names its layers as the design fixes them: `qkv` and `proj` in CoSwin's window attention,
`q_proj`, `k_proj`, `v_proj` and `out_proj` in text (and fusion) attention, `fc1` and `fc2` in every MLP, and
`projection` for CoSwin's convolutional tokenizer and patch merging (Conv2d, Conv3d in Video CoSwin). The default
LoRA config adapts all of those the model has, and trains the model's task head in full (`modules_to_save`). The
convolutions are in the defaults because Florence's tokenizer is where an image-domain shift lands: on the Shapes
background shift of `examples/finetune_lora.py`, LoRA reached 77-88% of full fine-tuning's gain without them (one
seed) and 82-124% with them, depending on the pretrained model and seed (for +0.6% of the parameters; README,
Fine-tuning).

| model | `target_modules` | `modules_to_save` |
|---|---|---|
| `FlorenceVisionModel`, `FlorenceVisionBackbone` | qkv, proj, fc1, fc2, projection | - |
| `FlorenceTextModel` | q_proj, k_proj, v_proj, out_proj, fc1, fc2 | - |
| `FlorenceModel` | all nine | visual_projection, text_projection |
| `FlorenceForImageClassification` | qkv, proj, fc1, fc2, projection | classifier |
| `FlorenceVideoVisionModel` | qkv, proj, fc1, fc2, projection | - |
| `FlorenceVideoModel` | all nine | visual_projection, text_projection |
| `FlorenceForVideoClassification` | qkv, proj, fc1, fc2, projection | classifier |
| `FlorenceFusionModel` | all nine (towers and co-attention layers) | - |
| `FlorenceForVQA` | all nine | vqa_head |
| `FlorenceForVisionLanguagePretraining` | all nine | itm_head, mlm_head |
| `FlorenceForObjectDetection` | the towers' layers (all nine when open-vocabulary) | hidden_states_norms, fpn, dyhead, head |

A model class declares its head in a `lora_modules_to_save` class attribute (adapters do; the table below covers the
classes that predate it). The config works with both PEFT routes: `peft.get_peft_model(model, config)` /
`PeftModel.from_pretrained(model, folder)`, which work with every PEFT release this package installs, and
Transformers' `model.add_adapter(config)` / `model.load_adapter(folder)`, which each Transformers release ties to a
minimum PEFT (5.24: peft >= 0.22). `add_adapter` / `load_adapter` here take Transformers' route and, when the installed
PEFT is too old for it, fail with a `ValueError` naming both versions and the PEFT route that works.

    from peft import get_peft_model
    from modeling_florence.peft_florence import default_lora_config
    lora_model = get_peft_model(model, default_lora_config(model, r=8))
"""

import importlib.metadata
import re
from pathlib import Path

from packaging import version
from torch import nn

# The layer names LoRA adapts by default, in the order the design lists them.
DEFAULT_TARGET_NAMES = ("qkv", "proj", "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "projection")
# Heads trained in full with the adapter, for model classes that do not declare `lora_modules_to_save` themselves.
DEFAULT_MODULES_TO_SAVE = {
    "FlorenceModel": ("visual_projection", "text_projection"),
    "FlorenceVideoModel": ("visual_projection", "text_projection"),
    "FlorenceForVideoClassification": ("classifier",),
    # The detector's neck and head are new on a pretrained backbone: trained in full, the towers through LoRA.
    "FlorenceForObjectDetection": ("hidden_states_norms", "fpn", "dyhead", "head"),
    "FlorenceForVQA": ("vqa_head",),
    "FlorenceForVisionLanguagePretraining": ("itm_head", "mlm_head"),
}
# Layer types PEFT's LoRA can wrap.
LORA_LAYER_TYPES = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.Embedding)


def _base_model(model: nn.Module) -> nn.Module:
    """The Transformers model inside a `PeftModel` (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def lora_layer_names(model: nn.Module) -> dict[str, list[str]]:
    """Distinct last-component names of the layers LoRA can adapt, by layer type (`{"Linear": ["fc1", ...], ...}`)."""
    found: dict[str, set[str]] = {}
    for name, module in _base_model(model).named_modules():
        if name and isinstance(module, LORA_LAYER_TYPES) and "lora_" not in name:
            found.setdefault(type(module).__name__, set()).add(name.rsplit(".", 1)[-1])
    return {kind: sorted(names) for kind, names in sorted(found.items())}


def _matches(module_name: str, target: str) -> bool:
    """PEFT's rule for one name of a `target_modules` list: the full name, or its last dotted components."""
    return module_name == target or module_name.endswith("." + target)


def check_lora_targets(model: nn.Module, target_modules, modules_to_save=None) -> None:
    """Raise a `ValueError` listing the valid names when a `target_modules` entry (or the regex, when a string is
    given) or a `modules_to_save` entry matches no layer of the model."""
    base = _base_model(model)
    names = [name for name, _ in base.named_modules() if name]
    adaptable = [name for name, module in base.named_modules() if name and isinstance(module, LORA_LAYER_TYPES)]
    valid = "; ".join(f"{kind}: {', '.join(layers)}" for kind, layers in lora_layer_names(base).items())
    if isinstance(target_modules, str):
        if not any(re.fullmatch(target_modules, name) for name in adaptable):
            raise ValueError(
                f"target_modules regex {target_modules!r} matches no LoRA-capable layer of {type(base).__name__}. "
                f"Layer names it has ({valid})"
            )
    else:
        missing = [t for t in target_modules or () if not any(_matches(name, t) for name in adaptable)]
        if missing:
            raise ValueError(
                f"target_modules {missing} match no LoRA-capable layer of {type(base).__name__}. Valid names ({valid})"
            )
    unknown = [m for m in modules_to_save or () if not any(_matches(name, m) for name in names)]
    if unknown:
        children = ", ".join(name for name, _ in base.named_children())
        raise ValueError(
            f"modules_to_save {unknown} match no module of {type(base).__name__}; its top-level modules: {children}"
        )


def default_target_modules(model: nn.Module) -> list[str]:
    """The design's attention/MLP layer names present in `model` (see the module docstring's table)."""
    present = {name for names in lora_layer_names(model).values() for name in names}
    targets = [name for name in DEFAULT_TARGET_NAMES if name in present]
    if not targets:
        raise ValueError(
            f"{type(_base_model(model)).__name__} has none of the default LoRA layers {list(DEFAULT_TARGET_NAMES)}; "
            f"pass target_modules explicitly (its layer names: {lora_layer_names(model)})"
        )
    return targets


def default_modules_to_save(model: nn.Module) -> list[str]:
    """The heads trained in full next to the adapter: the class's `lora_modules_to_save`, else the table's entry."""
    base = _base_model(model)
    declared = getattr(type(base), "lora_modules_to_save", None)
    if declared is None:
        declared = DEFAULT_MODULES_TO_SAVE.get(type(base).__name__, ())
    return _wrappable(dict(base.named_modules()), list(declared))


def _wrappable(modules: dict[str, nn.Module], names: list[str]) -> list[str]:
    """PEFT wraps every module whose name ends with a `modules_to_save` entry and cannot wrap containers: a
    ModuleList / ModuleDict, or a name that another module's name also ends with (`head` / `dyhead`), is replaced by
    its children's full names."""
    result = []
    for name in names:
        module = modules.get(name)
        ambiguous = any(other != name and other.endswith(name) for other in modules)
        if module is not None and (isinstance(module, (nn.ModuleList, nn.ModuleDict)) or ambiguous):
            result += _wrappable(modules, [f"{name}.{child}" for child, _ in module.named_children()])
        else:
            result.append(name)
    return result


def default_lora_config(
    model: nn.Module,
    r: int = 8,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.0,
    target_modules=None,
    modules_to_save=None,
    **kwargs,
):
    """A `peft.LoraConfig` for a Florence model: its attention and MLP layers, its head in `modules_to_save`.

    Args:
        model: any Florence model (or a `PeftModel` around one).
        r, lora_alpha (default `2 * r`), lora_dropout: the usual LoRA hyper-parameters.
        target_modules, modules_to_save: override the defaults; every name must match a layer of the model (checked
            here, with an error listing the valid names, rather than deep inside PEFT).
        kwargs: any other `LoraConfig` field (e.g. `init_lora_weights`).
    """
    from peft import LoraConfig

    target_modules = default_target_modules(model) if target_modules is None else target_modules
    modules_to_save = default_modules_to_save(model) if modules_to_save is None else modules_to_save
    check_lora_targets(model, target_modules, modules_to_save)
    return LoraConfig(
        r=r,
        lora_alpha=2 * r if lora_alpha is None else lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        modules_to_save=list(modules_to_save) or None,
        **kwargs,
    )


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """`(trainable, total)` parameter counts (each shared tensor counted once)."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def adapter_file(folder: str | Path) -> Path:
    """The adapter weights a PEFT `save_pretrained` wrote (`adapter_model.safetensors`)."""
    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no adapter_model.safetensors (save the adapter with save_pretrained)")
    return path


def transformers_peft_problem() -> str | None:
    """Why Transformers' own adapter methods (`add_adapter`, `load_adapter`, ...) cannot run here, or `None`: the
    PEFT version the installed Transformers requires against the installed one."""
    import transformers
    from transformers.integrations import peft as transformers_peft

    needed = getattr(transformers_peft, "MIN_PEFT_VERSION", None)
    try:
        installed = importlib.metadata.version("peft")
    except importlib.metadata.PackageNotFoundError:
        return "PEFT is not installed: pip install peft"
    if needed is None or version.parse(installed) >= version.parse(needed):
        return None
    return (
        f"Transformers {transformers.__version__}'s model.add_adapter / load_adapter need peft>={needed}, but peft "
        f"{installed} is installed. Upgrade PEFT (pip install -U 'peft>={needed}') or use PEFT directly, which works "
        "with this version: peft.get_peft_model(model, default_lora_config(model)) to add an adapter, "
        "peft.PeftModel.from_pretrained(model, folder) to load one"
    )


def check_transformers_peft() -> None:
    """Raise a `ValueError` naming the versions when Transformers' adapter methods cannot run with this PEFT."""
    problem = transformers_peft_problem()
    if problem is not None:
        raise ValueError(problem)


def add_adapter(model: nn.Module, config, adapter_name: str = "default") -> nn.Module:
    """Transformers' `model.add_adapter(config, adapter_name)`, with a clear error on a too-old PEFT."""
    check_transformers_peft()
    model.add_adapter(config, adapter_name=adapter_name)
    return model


def load_adapter(model: nn.Module, folder: str | Path, adapter_name: str = "default") -> nn.Module:
    """Transformers' `model.load_adapter(folder, adapter_name)`, with a clear error on a too-old PEFT."""
    adapter_file(folder)
    check_transformers_peft()
    model.load_adapter(str(folder), adapter_name=adapter_name)
    return model


__all__ = [
    "DEFAULT_TARGET_NAMES",
    "add_adapter",
    "adapter_file",
    "check_transformers_peft",
    "load_adapter",
    "transformers_peft_problem",
    "check_lora_targets",
    "default_lora_config",
    "default_modules_to_save",
    "default_target_modules",
    "lora_layer_names",
    "parameter_counts",
]
