"""`florence-pretrain --dry-run`: the model, the FSDP2 sharding plan of configuration/accelerate-fsdp.yaml and one
batch, built on the meta device (no memory, no data), and the memory each process would need.

Per process, with N processes and bf16 mixed precision as the yaml asks (fp32 master weights):
- sharded state: fp32 parameters, gradients and AdamW's two moments, 16 bytes per parameter / N;
- unsharded bf16 working copies: the largest wrapped unit gathered, twice (the one computing and the one prefetched);
- activations: the bytes autograd saves for backward per sample (measured by running forward on meta tensors with
  bf16 autocast semantics approximated by halving fp32 bytes), times the local batch.
"""

import json
from pathlib import Path
from unittest import mock

import torch

from . import modeling_florence
from .modeling_florence import FlorenceModel

BYTES_PER_PARAMETER_STATE = 16  # fp32 weight + fp32 grad + AdamW exp_avg + exp_avg_sq
FSDP_CONFIG = Path(__file__).resolve().parent.parent / "configuration" / "accelerate-fsdp.yaml"


def wrapped_layer_names(path: Path = FSDP_CONFIG) -> list[str]:
    """The classes `fsdp_transformer_layer_cls_to_wrap` names (read without a YAML dependency)."""
    for line in path.read_text().splitlines():
        key, _, value = line.strip().partition(":")
        if key == "fsdp_transformer_layer_cls_to_wrap":
            return [name.strip() for name in value.split(",") if name.strip()]
    raise ValueError(f"{path} has no fsdp_transformer_layer_cls_to_wrap")


def sharding_plan(model: torch.nn.Module, layer_names: list[str]) -> list[tuple[str, int]]:
    """(module name, parameter count) of each FSDP unit: every wrapped layer, then the root with the rest."""
    units, covered = [], set()
    for name, module in model.named_modules():
        if type(module).__name__ in layer_names:
            parameters = list(module.parameters())
            units.append((name, sum(p.numel() for p in parameters)))
            covered.update(id(p) for p in parameters)
    rest = sum(p.numel() for p in model.parameters() if id(p) not in covered)
    return units + [("(root)", rest)]


def saved_activation_bytes(model: FlorenceModel, batch: dict) -> int:
    """Bytes autograd saves for backward in one forward of `batch` (meta tensors: nothing is allocated)."""
    seen, total = set(), 0

    def pack(tensor):
        nonlocal total
        key = (tensor.data_ptr() if tensor.device.type != "meta" else id(tensor), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
        return tensor

    # the token-id check reads values, which meta tensors lack; the batch is built valid
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            mock.patch.object(modeling_florence, "check_token_values", lambda *args: None):
        model(**batch, return_loss=True)
    return total


def meta_batch(config, batch_size: int) -> dict:
    size, length = config.vision_config.image_size, config.text_config.max_position_embeddings
    return {"pixel_values": torch.zeros(batch_size, 3, size, size, device="meta"),
            "input_ids": torch.zeros(batch_size, length, dtype=torch.long, device="meta"),
            "attention_mask": torch.ones(batch_size, length, dtype=torch.long, device="meta")}


def dry_run(config, batch_size: int, num_processes: int, gradient_checkpointing: bool = False) -> dict:
    """Figures of one training step of `config` at global `batch_size` over `num_processes` FSDP2 processes."""
    if batch_size % num_processes:
        raise ValueError(f"batch_size {batch_size} is not divisible by num_processes {num_processes}")
    with torch.device("meta"):
        model = FlorenceModel(config)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    parameters = sum(p.numel() for p in model.parameters())
    plan = sharding_plan(model, wrapped_layer_names())
    per_sample = saved_activation_bytes(model, meta_batch(config, 1)) / 2  # bf16 autocast halves saved fp32 tensors
    local = batch_size // num_processes
    vision = config.vision_config
    image_tokens = (vision.image_size // vision.patch_size) ** 2
    text_tokens = config.text_config.max_position_embeddings
    figures = {
        "parameters": parameters, "fsdp_units": len(plan), "largest_unit_parameters": max(n for _, n in plan),
        "global_batch": batch_size, "processes": num_processes, "local_batch": local,
        "tokens_per_step": batch_size * (image_tokens + text_tokens),
        "sharded_state_gib": parameters * BYTES_PER_PARAMETER_STATE / num_processes / 2**30,
        "gathered_bf16_gib": 2 * 2 * max(n for _, n in plan) / 2**30,
        "activations_gib": per_sample * local / 2**30,
        "gradient_checkpointing": gradient_checkpointing,
    }
    figures["memory_per_process_gib"] = (figures["sharded_state_gib"] + figures["gathered_bf16_gib"]
                                         + figures["activations_gib"])
    return figures


def print_dry_run(figures: dict) -> None:
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}, indent=1))
