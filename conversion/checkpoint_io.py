"""Reading foreign checkpoints safely (safetensors, or `torch.load(weights_only=True)`) and loading them strictly."""

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

# Containers that training frameworks wrap state dicts in (official Swin/UniCL: "model", Lightning: "state_dict").
WRAPPER_KEYS = ("model", "state_dict", "module", "model_state_dict")
FOLDER_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat `{name: tensor}` from a `.safetensors`/`.pth`/`.bin` file or a Transformers model folder."""
    path = Path(path)
    if path.is_dir():
        for name in FOLDER_WEIGHT_FILES:
            if (path / name).is_file():
                return load_state_dict(path / name)
        raise FileNotFoundError(f"{path} is a folder without {' or '.join(FOLDER_WEIGHT_FILES)}")
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise ValueError(f"{path} is not a PyTorch weights file readable with weights_only=True: {error}") from error
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return checkpoint


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep the entries under `prefix`, without it."""
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source_format: str) -> None:
    """Load every weight or fail naming what did not match: a partial load would silently give garbage."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"The checkpoint does not match the {source_format} format it was read as: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, wrong shapes {wrong_shape[:8]}"
        )
    model.load_state_dict(state_dict, strict=True)


def converter_parser(description: str, formats: tuple[str, ...], model_name: str) -> argparse.ArgumentParser:
    """The arguments every converter takes: where to read, where to write, and which format to expect."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="state dict file (.pth/.bin/.safetensors) or model folder")
    parser.add_argument("--output", required=True, help=f"folder to write the {model_name} to")
    parser.add_argument("--format", default="auto", choices=formats, help="expected format (default: detect)")
    return parser


def contiguous_indices(state_dict: dict[str, torch.Tensor], pattern: str, what: str) -> list[int]:
    """The sorted indices that `pattern` (one group) captures in the keys; a gap means blocks are missing."""
    found = sorted({int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))})
    if found != list(range(len(found))):
        missing = sorted(set(range(max(found, default=-1) + 1)) - set(found))
        raise ValueError(f"The checkpoint has no {what} {missing} (found {found}): refusing to convert a different model")
    return found


def folder_config(checkpoint: str | Path, sub_config: str | None = None) -> dict:
    """A Transformers folder's config.json (its `sub_config` part, when there is one); empty for weight files."""
    config_file = Path(checkpoint) / "config.json"
    if not config_file.is_file():
        return {}
    config = json.loads(config_file.read_text())
    return config.get(sub_config, config) if sub_config else config


def check_declared(config, declared: dict, keys: tuple[str, ...], source: str) -> None:
    """Refuse a conversion whose architecture differs from what the checkpoint's config.json declares (a head count
    that disagrees, a layer missing at the end): the weights would be loaded into a different model."""
    for key in keys:
        if key in declared and declared[key] != getattr(config, key):
            raise ValueError(f"Inconsistent {key}: the weights (and flags) give {getattr(config, key)} but {source} "
                             f"declares {declared[key]}; refusing to convert a different model")


def write_converted(model, output: str | Path, checkpoint: str | Path | None = None) -> None:
    """`save_pretrained` and a model card naming the source checkpoint, then exit non-zero when no weights were
    written (e.g. `output` is an existing file, which `save_pretrained` only logs)."""
    from modeling_florence.model_card import write_model_card

    model.save_pretrained(output)
    output = Path(output)
    if not (output / "config.json").is_file() or not any(output.glob("model*.safetensors")):
        sys.exit(f"error: nothing was written to {output}")
    write_model_card(output, base_model=Path(checkpoint).name if checkpoint else None)


def run_converter(convert, *args, **kwargs):
    """Run a conversion for a command line: a refused checkpoint exits non-zero with the reason, not a traceback."""
    try:
        return convert(*args, **kwargs)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
