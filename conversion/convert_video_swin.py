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


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conversion.checkpoint_io import (  # noqa: E402
    contiguous_indices,
    declared_fields,
    expected_config,
    load_checkpoint,
    run_converter,
    verify_architecture,
    write_converted,
)
from conversion.convert_swin import SWIN_ALIASES  # noqa: E402
from modeling_florence.configuration_florence_video import FlorenceVideoConfig, FlorenceVideoVisionConfig  # noqa: E402
from modeling_florence.modeling_florence_video import (  # noqa: E402
    FlorenceForVideoClassification,
    FlorenceVideoVisionModel,
)
from modeling_florence.video_processing_florence import FlorenceVideoProcessor  # noqa: E402

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
    stages = contiguous_indices(state_dict, r"stages\.(\d+)\.blocks\.", "stage")
    depths, num_heads, windows = [], [], []
    for stage in stages:
        blocks = contiguous_indices(state_dict, rf"stages\.{stage}\.blocks\.(\d+)\.", f"block of stage {stage} numbered")
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


VIDEO_ALIASES = {**SWIN_ALIASES, "patch_size": ("patch_size",)}


def verify_video_swin(config, metadata: dict, source: str, expected: dict | None, paired_blocks: bool) -> None:
    """Print the architecture read from the weights; refuse odd depths or a field that the checkpoint's metadata
    (mmaction's config text, ...) or `expected` (a Video CoSwin config dict, a Swin size) states differently."""
    inferred = {"embed_dim": config.embed_dim, "depths": list(config.depths), "num_heads": list(config.num_heads),
                "window_size": list(config.window_size), "patch_size": list(config.patch_size)}
    claims = [(f"{source}'s metadata", declared_fields(metadata, VIDEO_ALIASES, ("vision_config", "backbone"),
                                                       fallback=True)),
              ("--config", declared_fields(expected or {}, VIDEO_ALIASES, ("vision_config",), fallback=True))]
    verify_architecture("Video Swin", inferred, claims, {"depths": config.depths} if paired_blocks else None)


def video_processor(config, num_frames: int | None = None) -> FlorenceVideoProcessor:
    """The peers' test-time preprocessing (torchvision swin3d / mmaction2): short side 256, centre crop 224, ImageNet
    statistics, the clip length the config records."""
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    vision = getattr(config, "vision_config", config)
    return FlorenceVideoProcessor(num_frames=num_frames or vision.num_frames, size={"shortest_edge": 256},
                                  crop_size={"height": 224, "width": 224}, image_mean=list(IMAGENET_DEFAULT_MEAN),
                                  image_std=list(IMAGENET_DEFAULT_STD))


def convert(state_dict: dict, metadata: dict | None = None, expected: dict | None = None, paired_blocks: bool = True,
            source: str = "the checkpoint", **config_overrides):
    """A Florence model holding the checkpoint's weights (classification model when it has a head); refuses odd
    depths (`paired_blocks`) and an architecture other than the one `metadata` or `expected` states."""
    converted = convert_state_dict(state_dict)
    vision_config = config_from_state_dict(converted, **config_overrides)
    verify_video_swin(vision_config, metadata or {}, source, expected, paired_blocks)
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
    parser.add_argument("--config", default=None, help="the architecture the checkpoint should have, to refuse a "
                        "mismatch: a config JSON, a preset name (florence-video-tiny) or a Swin size (swin-t/s/b/l)")
    parser.add_argument("--unpaired-blocks", action="store_true", help="accept stages with an odd number of blocks")
    args = parser.parse_args(argv)
    overrides = {}
    if args.window_size:
        overrides["window_size"] = args.window_size
    if args.num_frames:
        overrides["num_frames"] = args.num_frames

    def run():
        state_dict, metadata = load_checkpoint(args.checkpoint)
        return convert(state_dict, metadata, expected_config(args.config, "vision_config"), not args.unpaired_blocks,
                       str(args.checkpoint), **overrides)

    model = run_converter(run)
    write_converted(model, args.output, args.checkpoint)
    video_processor(model.config, args.num_frames).save_pretrained(args.output)  # the video pipeline's input
    params = sum(p.numel() for p in model.parameters())
    print(f"Wrote {type(model).__name__} ({params / 1e6:.1f}M parameters) and its video processor to {args.output}")


if __name__ == "__main__":
    main()
