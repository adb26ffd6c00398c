"""Reading foreign checkpoints safely (safetensors, or `torch.load(weights_only=True)`) and loading them strictly."""

import argparse
import ast
import json
import re
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

# Containers that training frameworks wrap state dicts in (official Swin/UniCL: "model", Lightning: "state_dict").
WRAPPER_KEYS = ("model", "state_dict", "module", "model_state_dict")
FOLDER_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat `{name: tensor}` from a `.safetensors`/`.pth`/`.bin` file or a Transformers model folder."""
    return load_checkpoint(path)[0]


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """`(state_dict, metadata)` of a `.safetensors`/`.pth`/`.bin` file or a Transformers model folder.

    `metadata` is what the checkpoint says about itself, to check the architecture read from the tensors against: a
    folder's `config.json` (under `"config.json"`), a safetensors header's metadata (JSON values decoded), and the
    non-weight entries of a training checkpoint (`config`, mmdet/mmaction's `meta` with the config's text,
    Lightning's `hyper_parameters`, ...)."""
    path = Path(path)
    if path.is_dir():
        for name in FOLDER_WEIGHT_FILES:
            if (path / name).is_file():
                state_dict, metadata = load_checkpoint(path / name)
                if (path / "config.json").is_file():
                    metadata["config.json"] = json.loads((path / "config.json").read_text())
                return state_dict, metadata
        raise FileNotFoundError(f"{path} is a folder without {' or '.join(FOLDER_WEIGHT_FILES)}")
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        return load_file(str(path)), {key: _maybe_json(value) for key, value in header.items()}
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise ValueError(f"{path} is not a PyTorch weights file readable with weights_only=True: {error}") from error
    metadata = {}
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            metadata = {k: v for k, v in checkpoint.items() if k != key and not isinstance(v, torch.Tensor)}
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return checkpoint, metadata


def _maybe_json(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


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


def converter_parser(description: str, formats: tuple[str, ...], model_name: str,
                     swin: bool = False, config_help: str | None = None) -> argparse.ArgumentParser:
    """The arguments every converter takes: where to read, where to write, which format to expect and the
    architecture to compare with (`config_help` words `--config` for converters that read it differently)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="state dict file (.pth/.bin/.safetensors) or model folder")
    parser.add_argument("--output", required=True, help=f"folder to write the {model_name} to")
    parser.add_argument("--format", default="auto", choices=formats, help="expected format (default: detect)")
    parser.add_argument("--config", default=None, help=config_help or "the architecture the checkpoint should have, to "
                        "refuse a mismatch: a config JSON, a preset name (e.g. florence-tiny) or a Swin size "
                        "(swin-t/s/b/l)")
    if swin:
        parser.add_argument("--unpaired-blocks", action="store_true", help="accept Swin stages with an odd number "
                            "of blocks (refused by default: blocks come in window / shifted-window pairs)")
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


# The published Swin sizes (Swin, Video Swin and the Swin backbones of DyHead / METER / UniCL), for `--config swin-b`.
SWIN_ARCHITECTURES = {
    "swin-t": {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24]},
    "swin-s": {"embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24]},
    "swin-b": {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32]},
    "swin-l": {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48]},
}
SWIN_NAME = re.compile(r"swin[_-]?(tiny|small|base|large|t|s|b|l)(?![a-z])", re.IGNORECASE)


def swin_size(name: str) -> dict:
    """The published architecture a Swin model name states (`swin_base_patch4_window12_384`, `swin-t`), or {}."""
    match = SWIN_NAME.search(name or "")
    return dict(SWIN_ARCHITECTURES[f"swin-{match.group(1)[0].lower()}"]) if match else {}


def _normalise(value):
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _find(tree, name: str):
    """The first value under key `name` (case-insensitive) in nested dicts/lists, or `name=...` / `name: ...` in a
    config file's text (mmdet/mmaction keep theirs as text in `meta`); `None` when absent."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if isinstance(key, str) and key.lower() == name.lower() and not isinstance(value, dict):
                return _normalise(value)
        for value in tree.values():
            found = _find(value, name)
            if found is not None:
                return found
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            found = _find(value, name)
            if found is not None:
                return found
    elif isinstance(tree, str):
        match = re.search(rf"\b{re.escape(name)}\s*[=:]\s*(\[[^\]]*\]|\([^)]*\)|\d+)", tree)
        if match:
            try:
                return _normalise(ast.literal_eval(match.group(1)))
            except (ValueError, SyntaxError):
                return None
    return None


def _subtree(tree, within: tuple[str, ...]):
    """The part of `tree` under the first key named in `within` (case-insensitive, at any depth), else `None`."""
    if not within:
        return tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            if isinstance(key, str) and key.lower() in {w.lower() for w in within}:
                return value
        for value in tree.values():
            found = _subtree(value, within)
            if found is not None:
                return found
    return None


def declared_fields(metadata, aliases: dict[str, tuple[str, ...]], within: tuple[str, ...] = (),
                    prefix: str = "", fallback: bool = False) -> dict:
    """`{prefix + field: value}` for each field whose name (or an alias) the metadata states, looked up under
    `within` (or, with `fallback`, in the whole metadata when nothing is named so: a config kept as text)."""
    tree = _subtree(metadata, within)
    if tree is None and fallback:
        tree = metadata
    declared = {}
    for field, names in aliases.items():
        for name in names:
            value = _find(tree, name) if tree is not None else None
            if value is not None:
                declared[prefix + field] = value
                break
    return declared


def expected_config(spec: str | None, part: str | None = None) -> dict:
    """The config dict `--config` names: a JSON file, a Swin size (`swin-t`...) or a preset; `part` picks a
    sub-config (`vision_config`, `text_config`) when the dict has one."""
    if not spec:
        return {}
    if Path(spec).is_file():
        tree = json.loads(Path(spec).read_text())
    elif spec.lower() in SWIN_ARCHITECTURES:
        tree = dict(SWIN_ARCHITECTURES[spec.lower()])
    else:
        from modeling_florence import load_preset

        tree = load_preset(spec).to_dict()  # ValueError listing the presets when unknown
    if part and isinstance(tree.get(part), dict):
        return tree[part]
    return tree


def verify_architecture(name: str, inferred: dict, claims: list[tuple[str, dict]], paired: dict | None = None):
    """Print the architecture read from the tensors, then refuse (`ValueError`) a Swin stage with an odd block count
    (`paired`: Swin blocks come in window / shifted-window pairs, so an odd depth means a block is missing) or any
    field that a claim (the checkpoint's metadata, `--config`) states differently."""
    print(f"{name} architecture read from the weights: " + ", ".join(f"{k}={v}" for k, v in inferred.items()))
    for field, depths in (paired or {}).items():
        odd = [stage for stage, depth in enumerate(depths) if depth % 2]
        if odd:
            raise ValueError(
                f"Inconsistent {field} {list(depths)}: Swin blocks come in pairs (window, then shifted window) but "
                f"stage(s) {odd} have an odd number of blocks; the checkpoint is probably missing its last block. "
                "Refusing to convert a different model (pass paired_blocks=False / --unpaired-blocks if the "
                "source model really has odd depths)"
            )
    for source, claim in claims:
        for field, value in claim.items():
            if field in inferred and _normalise(value) != _normalise(inferred[field]):
                raise ValueError(f"Inconsistent {field}: the weights (and flags) give {inferred[field]} but {source} declares "
                                 f"{value}; refusing to convert a different model")
