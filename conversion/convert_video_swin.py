# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Convert Video Swin checkpoints into a Florence Video CoSwin (`patch_embed="linear"`, `downsample="merge"`).

Reads torchvision `swin3d_t/s/b` state dicts (`patch_embed.proj`, `features.N.M.attn.qkv`, `features.1.reduction`,
`norm`, `head`) and mmaction2 / official Video Swin checkpoints (`backbone.patch_embed.proj`,
`backbone.layers.S.blocks.B.attn.qkv`, `backbone.layers.S.downsample.reduction`, `backbone.norm` or `backbone.norm3`,
`cls_head.fc_cls`). The architecture (width, depths, heads, patch and window sizes) is read from the tensor shapes;
a checkpoint with a classification head becomes a `FlorenceForVideoClassification`, otherwise a
`FlorenceVideoVisionModel`. The converted config sets `window_bias="truncated"`, the peers' indexing of windows shrunk
to small maps, so outputs match the source at every input size.

    python conversion/convert_video_swin.py --checkpoint swin3d_t-7615ae03.pth --output video-swin-t
    python conversion/convert_video_swin.py --checkpoint swin_tiny_patch244_window877_kinetics400_1k.pth --output vst
"""

import argparse
import math
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conversion.checkpoint_io import write_converted  # noqa: E402
from modeling_florence.configuration_florence_video import FlorenceVideoConfig, FlorenceVideoVisionConfig  # noqa: E402
from modeling_florence.modeling_florence_video import (  # noqa: E402
    FlorenceForVideoClassification,
    FlorenceVideoVisionModel,
)

BLOCK_KEYS = {
    "norm1": "norm1",
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.proj",
    "attn.relative_position_bias_table": "attn.relative_position_bias_table",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.0": "mlp.fc1",  # torchvision's MLP is a Sequential: Linear, GELU, Dropout, Linear, Dropout
    "mlp.3": "mlp.fc2",
}
SKIPPED = ("relative_position_index", "attn_mask")


def detect_format(state_dict: dict) -> str:
    """`"torchvision"` or `"mmaction"` (official Video Swin / mmaction2), else a `ValueError` naming what is missing."""
    if "patch_embed.proj.weight" in state_dict and any(k.startswith("features.") for k in state_dict):
        return "torchvision"
    if "backbone.patch_embed.proj.weight" in state_dict or (
        "patch_embed.proj.weight" in state_dict and any(k.startswith("layers.") for k in state_dict)
    ):
        return "mmaction"
    raise ValueError(
        "Not a Video Swin checkpoint: expected torchvision keys (patch_embed.proj.weight, features.*) or "
        "mmaction2 / official keys (backbone.patch_embed.proj.weight, backbone.layers.*)"
    )


def _rename_torchvision(key: str) -> str | None:
    if key.startswith("patch_embed."):
        return key.replace("patch_embed.proj.", "embeddings.projection.").replace("patch_embed.norm.", "embeddings.norm.")
    match = re.match(r"features\.(\d+)\.(\d+)\.(.+)\.(weight|bias|relative_position_bias_table)$", key)
    if match:
        index, block, module, leaf = match.groups()
        module = f"{module}.{leaf}" if leaf == "relative_position_bias_table" else module
        stage = int(index) // 2
        name = BLOCK_KEYS[module]
        return f"stages.{stage}.blocks.{block}.{name}" + ("" if leaf == "relative_position_bias_table" else f".{leaf}")
    match = re.match(r"features\.(\d+)\.(reduction|norm)\.(weight|bias)$", key)
    if match:
        index, module, leaf = match.groups()
        return f"stages.{(int(index) + 1) // 2}.downsample.{module}.{leaf}"
    if key.startswith("norm."):
        return "layernorm." + key[len("norm."):]
    if key.startswith("head."):
        return "classifier." + key[len("head."):]
    return None


def _rename_mmaction(key: str) -> str | None:
    key = key[len("backbone."):] if key.startswith("backbone.") else key
    if key.startswith("cls_head.fc_cls."):
        return "classifier." + key[len("cls_head.fc_cls."):]
    if key.startswith("patch_embed."):
        return key.replace("patch_embed.proj.", "embeddings.projection.").replace("patch_embed.norm.", "embeddings.norm.")
    match = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)$", key)
    if match:
        stage, block, rest = match.groups()
        module, leaf = rest.rsplit(".", 1)
        if leaf == "relative_position_bias_table":
            return f"stages.{stage}.blocks.{block}.attn.relative_position_bias_table"
        return f"stages.{stage}.blocks.{block}.{BLOCK_KEYS[module]}.{leaf}"
    match = re.match(r"layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)$", key)
    if match:  # mmaction merges at the end of stage s; we merge at the start of stage s + 1
        stage, module, leaf = match.groups()
        return f"stages.{int(stage) + 1}.downsample.{module}.{leaf}"
    for final in ("norm.", "norm3."):
        if key.startswith(final):
            return "layernorm." + key[len(final):]
    return None


def convert_state_dict(state_dict: dict) -> dict:
    """Rename a torchvision or mmaction2 Video Swin state dict to Florence Video CoSwin names (`classifier.*` for a
    head, tower weights unprefixed)."""
    if "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    elif "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    rename = _rename_torchvision if detect_format(state_dict) == "torchvision" else _rename_mmaction
    converted, unknown = {}, []
    for key, value in state_dict.items():
        if key.endswith(SKIPPED):
            continue
        new_key = rename(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise ValueError(f"Unrecognised Video Swin keys: {unknown[:5]}{'...' if len(unknown) > 5 else ''}")
    return converted


def config_from_state_dict(state_dict: dict, **overrides) -> FlorenceVideoVisionConfig:
    """Read the Video Swin architecture off converted tensor shapes."""
    patch = state_dict["embeddings.projection.weight"]
    embed_dim, num_channels = patch.shape[:2]
    stages = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("stages.")})
    depths, num_heads, windows = [], [], []
    for stage in stages:
        blocks = {int(k.split(".")[3]) for k in state_dict if k.startswith(f"stages.{stage}.blocks.")}
        depths.append(len(blocks))
        table = state_dict[f"stages.{stage}.blocks.0.attn.relative_position_bias_table"]
        num_heads.append(table.shape[1])
        windows.append(table.shape[0])
    window_size = overrides.pop("window_size", None)
    if window_size is None:
        rows = windows[0]
        # (2Wt-1)(2Wh-1)(2Ww-1) rows with Wh = Ww: find the pair that multiplies out, preferring the published windows
        for wt, ws in [(8, 7), (16, 7), (4, 7), (2, 7)] + [(t, s) for t in range(1, 33) for s in range(1, 33)]:
            if (2 * wt - 1) * (2 * ws - 1) ** 2 == rows:
                window_size = [wt, ws, ws]
                break
        else:
            raise ValueError(f"Cannot infer the window from a bias table of {rows} rows; pass --window-size")
    if any(rows != windows[0] for rows in windows):
        raise ValueError(f"Per-stage windows differ ({windows} table rows); pass window_sizes explicitly")
    fields = dict(
        embed_dim=embed_dim, depths=depths, num_heads=num_heads, num_channels=num_channels,
        patch_size=list(patch.shape[2:]), window_size=window_size, patch_embed="linear", downsample="merge",
        window_bias="truncated", qkv_bias="stages.0.blocks.0.attn.qkv.bias" in state_dict, drop_path_rate=0.1,
    )
    fields.update(overrides)
    return FlorenceVideoVisionConfig(**fields)


def convert(state_dict: dict, **config_overrides):
    """A Florence model holding the checkpoint's weights (classification model when it has a head)."""
    converted = convert_state_dict(state_dict)
    vision_config = config_from_state_dict(converted, **config_overrides)
    head = {k[len("classifier."):]: converted.pop(k) for k in list(converted) if k.startswith("classifier.")}
    if head:
        model = FlorenceForVideoClassification(
            FlorenceVideoConfig(vision_config=vision_config.to_dict(), num_labels=head["weight"].shape[0])
        )
        tower = model.vision_model
        model.classifier.load_state_dict(head)
    else:
        model = tower = FlorenceVideoVisionModel(vision_config)
    tower.load_state_dict(converted, strict=True)
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pth / .pt state dict (torchvision or mmaction2)")
    parser.add_argument("--output", required=True, help="folder for save_pretrained (safetensors)")
    parser.add_argument("--window-size", type=int, nargs=3, default=None, help="t h w, if not inferable")
    parser.add_argument("--num-frames", type=int, default=None, help="training clip length to record in the config")
    args = parser.parse_args(argv)
    state_dict = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    overrides = {}
    if args.window_size:
        overrides["window_size"] = args.window_size
    if args.num_frames:
        overrides["num_frames"] = args.num_frames
    model = convert(state_dict, **overrides)
    write_converted(model, args.output, args.checkpoint)
    params = sum(p.numel() for p in model.parameters())
    print(f"Wrote {type(model).__name__} ({params / 1e6:.1f}M parameters) to {args.output}")


if __name__ == "__main__":
    main()
