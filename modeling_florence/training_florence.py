# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""What every task's training shares: the fused AdamW with its fallback, parameter groups with per-prefix learning
rates, the bf16 check, `require_columns`, and the `TrainingArguments` defaults that keep CPU runs quiet
(`dataloader_pin_memory` only with CUDA; `ddp_find_unused_parameters=False`, since every Florence task model uses all
its parameters in each step), and `reuse_freed_memory`, which stops glibc from handing each step's activations back to
the kernel.

Numbers given to a script are checked by `recipe_florence.check_arguments`, the same check recipes use.
"""

import argparse
import ctypes
import os
import sys
from argparse import RawDescriptionHelpFormatter

import torch

from .recipe_florence import check_number


class ArgumentParser(argparse.ArgumentParser):
    """The scripts' parser: one flag style, `--num-train`, with the underscore spelling (`--num_train`, Transformers'
    style) accepted as an alias of every long flag (and the reverse for flags declared with underscores)."""

    def add_argument(self, *names, **kwargs):
        spellings = list(names)
        for name in names:
            if name.startswith("--"):
                for other in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
                    if other not in spellings:
                        spellings.append(other)
        if spellings and spellings[0].startswith("--"):  # dashes first: the help shows the canonical spelling
            spellings.sort(key=lambda name: "_" in name)
            kwargs.setdefault("dest", spellings[0][2:].replace("-", "_"))
        return super().add_argument(*spellings, **kwargs)


def bf16_on_this_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))


def resolve_bf16(requested: bool) -> bool:
    """`--bf16` as it will run: kept on a GPU or a CPU with bf16 units, else off with a line saying so."""
    if requested and not torch.cuda.is_available() and not bf16_on_this_cpu():
        print("--bf16: this CPU has no bf16 units (bf16 would be slower than fp32): training in fp32")
        return False
    return requested


def fused_adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with its fused kernel where the parameters' device has one: on CPU torch's default is a Python loop over
    the tensors (the fused kernel updates the 49k-row token embedding ~1.5x faster; ~12 % of a tiny VQA step); the
    loop elsewhere. Every group's learning rate and weight decay is checked (torch checks only the default `lr`)."""
    params = list(params)
    for index, group in enumerate(params):
        if isinstance(group, dict):
            for key in ("lr", "weight_decay"):
                if key in group:
                    check_number(f"parameter group {index} {key}", group[key], low=0.0)
    for key in ("lr", "weight_decay"):
        if key in kwargs:
            check_number(key, kwargs[key], low=0.0)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def grouped_adamw(model, learning_rate: float, scales: dict[str, float], weight_decay: float = 0.01,
                  decay_all: bool = False):
    """AdamW over the trainable parameters with `learning_rate * scales[prefix]` for names starting with `prefix`
    (1 elsewhere); no decay on biases, norms and embeddings unless `decay_all`; the fused kernel where available."""
    for prefix, scale in scales.items():
        check_number(f"learning-rate scale of {prefix!r}", scale, low=0.0)
    check_number("learning_rate", learning_rate, low=0.0, above=True)
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        scale = next((value for prefix, value in scales.items() if name.startswith(prefix)), 1.0)
        decay = decay_all or (parameter.ndim > 1 and "embedding" not in name)
        groups.setdefault((scale, decay), []).append(parameter)
    return fused_adamw([
        {"params": params, "lr": learning_rate * scale, "weight_decay": weight_decay if decay else 0.0}
        for (scale, decay), params in groups.items()
    ], lr=learning_rate)


def require_columns(dataset, columns, what: str) -> None:
    """A `ValueError` naming the missing columns, the columns found and what needs them."""
    found = list(getattr(dataset, "column_names", None) or dataset)
    missing = [column for column in columns if column not in found]
    if missing:
        raise ValueError(f"The {what} data set has no column(s) {missing} (columns found: {found}); "
                         f"{what} needs {list(columns)}")


def quiet_defaults() -> dict:
    """`TrainingArguments` fields every task sets: pinned memory only where it helps (CUDA; torch warns on CPU), no
    unused-parameter search under DDP (all parameters take part in each step; the search warns and costs a pass)."""
    return {"dataloader_pin_memory": torch.cuda.is_available(), "ddp_find_unused_parameters": False}


def training_arguments(output_dir, arguments_class=None, **overrides):
    """`TrainingArguments` (or `arguments_class`, e.g. `Seq2SeqTrainingArguments`) with the shared quiet defaults, no
    trackers and the raw columns kept. A training run is being set up, so freed memory is kept for reuse
    (`reuse_freed_memory`)."""
    from transformers import TrainingArguments

    reuse_freed_memory()
    defaults = {"output_dir": str(output_dir), "report_to": [], "remove_unused_columns": False,
                "dataloader_num_workers": 0, **quiet_defaults()}
    defaults.update(overrides)
    return (arguments_class or TrainingArguments)(**defaults)


__all__ = ["ArgumentParser", "RawDescriptionHelpFormatter", "bf16_on_this_cpu", "fused_adamw", "grouped_adamw",
           "glibc", "quiet_defaults", "require_columns", "resolve_bf16", "reuse_freed_memory",
           "training_arguments"]


# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit systems (32 MiB)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX, TRIM_THRESHOLD = 32 << 20, 1 << 30


def glibc():
    """glibc as a `ctypes` library, or None on other C libraries and systems (its malloc is the one tuned here)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None  # musl and other C libraries: no mallopt


def reuse_freed_memory() -> bool:
    """Keep the memory that freed tensors release in this process, for the next step to reuse (glibc's malloc).

    PyTorch's CPU allocator hands every tensor back to malloc. glibc returns blocks above its mmap threshold (dynamic,
    128 KiB to 32 MiB) to the kernel at once, and trims the heap top above 128 KiB, so each training step faults the
    pages of the same activations in again: 12,900 page faults per step of the `make demo` recipe (florence-tiny,
    batch 256), ~53 ms of kernel time a step. With the mmap threshold at glibc's maximum (32 MiB) and a 1 GiB trim
    threshold, blocks up to 32 MiB are reused from the heap: 200-1,000 faults a step, and a step 1.18x faster when
    `bench_pretrain.py --only allocator` alternates the two in one process (2 cores, AVX2). The process keeps up to
    1 GiB of freed memory for itself.

    Returns whether glibc took the settings; on other C libraries and systems nothing changes."""
    libc = glibc()
    if libc is None:
        return False
    return (bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX))
            and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)))


def process_threads() -> int:
    """Intra-op threads of this process: `OMP_NUM_THREADS` when set, else the cores shared among `WORLD_SIZE`
    processes."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", 1)))
