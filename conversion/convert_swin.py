"""Convert a Swin Transformer checkpoint (timm, official Swin / UniCL, mmdetection, or Transformers `SwinModel`) to a
`FlorenceVisionModel` folder in Swin mode (`patch_embed="linear"`, `downsample="merge"`).

The architecture is read from the tensor shapes and printed, then checked: a stage with an odd number of blocks (Swin
blocks come in window / shifted-window pairs, so a block is missing) and any field that the checkpoint's own metadata
(a folder's config.json, safetensors metadata, mmdet's config text) or `--config` (a JSON, a preset, `swin-t/s/b/l`)
states differently are refused. Swin V2 checkpoints are refused by name:

    python conversion/convert_swin.py --checkpoint swin_tiny_patch4_window7_224.pth --output coswin-swin-t \
        [--config swin-t]
"""

import math
import re
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conversion.checkpoint_io import (  # noqa: E402
    contiguous_indices,
    converter_parser,
    declared_fields,
    expected_config,
    load_checkpoint,
    load_strict,
    run_converter,
    strip_prefix,
    verify_architecture,
    write_converted,
)
from modeling_florence import FlorenceVisionConfig, FlorenceVisionModel  # noqa: E402

FORMATS = ("auto", "timm", "official", "transformers", "unicl", "mmdet")
# Buffers and classifier heads that have no counterpart in the encoder.
IGNORED = re.compile(r"(^|\.)(relative_position_index|attn_mask)$|^(head|classifier|pooler)\.")

# Transformers Swin block names -> ours (timm/official already use ours). Both the names of Hub checkpoints
# (`attention.self.query`, ...) and those of Transformers 5 modules (`attention.q_proj`, ...) are read.
BLOCK_RENAMES = {
    "layernorm_before": "norm1",
    "attention.self.relative_position_bias_table": "attn.relative_position_bias_table",
    "attention.relative_position_bias.relative_position_bias_table": "attn.relative_position_bias_table",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
QKV_NAMES = {"query": "q", "key": "k", "value": "v", "q_proj": "q", "k_proj": "k", "v_proj": "v"}
# What a checkpoint's metadata may call the architecture fields (Transformers config.json, mmdet config text, ...).
SWIN_ALIASES = {"embed_dim": ("embed_dim", "embed_dims"), "depths": ("depths",), "num_heads": ("num_heads",),
                "window_size": ("window_size",)}
# Swin V2 (continuous position bias MLP, cosine attention with a learned logit scale): not the CoSwin/Swin V1 layout.
SWIN_V2_KEYS = re.compile(r"(cpb_mlp|continuous_position_bias_mlp|attn\.logit_scale|attention\.self\.logit_scale"
                          r"|relative_coords_table)")
# mmdetection / mmsegmentation Swin names -> official Swin names (the inverse of mmdet's `swin_converter`).
MMDET_RENAMES = (
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^stages\.", "layers."),
    (r"\.attn\.w_msa\.", ".attn."),
    (r"\.ffn\.layers\.0\.0\.", ".mlp.fc1."),
    (r"\.ffn\.layers\.1\.", ".mlp.fc2."),
)
# mmdet's patch merging gathers each 2x2 neighbourhood with nn.Unfold (channel-major: c * 4 + position, positions
# x00, x01, x10, x11); Swin concatenates position-major in the order x00, x10, x01, x11.
UNFOLD_TO_SWIN = [0, 2, 1, 3]


def detect_format(state_dict: dict[str, torch.Tensor]) -> str:
    keys = set(state_dict)
    v2 = sorted(key for key in keys if SWIN_V2_KEYS.search(key))
    if v2:
        raise ValueError(
            f"This is a Swin Transformer V2 checkpoint ({v2[0]}, ... : continuous position bias and cosine attention), "
            "which Florence's Swin V1 / CoSwin tower cannot hold; convert a Swin V1 checkpoint (swin_tiny_patch4_"
            "window7_224 and the like) instead"
        )
    if any(k.startswith("image_encoder.") or k.startswith("visual.layers.") for k in keys):
        return "unicl"
    if "patch_embed.projection.weight" in keys:
        return "mmdet"
    if any("patch_embeddings.projection.weight" in k for k in keys):
        return "transformers"
    if "patch_embed.proj.weight" in keys:
        # Official Swin (and timm < 0.9) downsample at the END of stages 0-2; timm >= 0.9 at the START of 1-3.
        return "official" if any(k.startswith("layers.0.downsample.") for k in keys) else "timm"
    raise ValueError(
        "Not a Swin checkpoint: found none of 'patch_embed.proj.weight' (timm/official), "
        "'embeddings.patch_embeddings.projection.weight' (Transformers), 'patch_embed.projection.weight' "
        "(mmdetection) or 'image_encoder.' (UniCL) among keys "
        f"such as {sorted(keys)[:5]}"
    )


def _from_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith("swin.") for k in state_dict):
        state_dict = strip_prefix(state_dict, "swin.")
    converted = {}
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if IGNORED.search(key):
            continue
        key = key.replace("embeddings.patch_embeddings.projection", "embeddings.projection")
        match = re.match(r"encoder\.layers\.(\d+)\.(blocks\.\d+|downsample)\.(.+)", key)
        if match:
            stage, part, name = int(match.group(1)), match.group(2), match.group(3)
            if part == "downsample":
                converted[f"stages.{stage + 1}.downsample.{name}"] = value
                continue
            qkv = re.match(r"attention\.(?:self\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$", name)
            if qkv:
                target = f"stages.{stage}.{part}.attn.qkv.{qkv.group(2)}"
                qkv_parts.setdefault(target, {})[QKV_NAMES[qkv.group(1)]] = value
                continue
            for old, new in BLOCK_RENAMES.items():
                if name == old or name.startswith(old + "."):
                    name = new + name[len(old) :]
                    break
            converted[f"stages.{stage}.{part}.{name}"] = value
            continue
        converted[key] = value
    for target, parts in qkv_parts.items():
        converted[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return converted


def mmdet_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmdetection Swin names (`patch_embed.projection`, `stages.S.blocks.B.attn.w_msa.qkv`, `ffn.layers.0.0`,
    `stages.S.downsample.reduction`) -> official Swin names, with the patch-merging weights put back in Swin's
    concatenation order. Other keys (e.g. the per-output norms `normI`) are kept as they are."""
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in MMDET_RENAMES:
            key = re.sub(pattern, replacement, key)
        if re.search(r"\.downsample\.(reduction\.weight|norm\.(weight|bias))$", key):
            width = value.shape[-1] // 4
            value = value.reshape(*value.shape[:-1], width, 4).transpose(-1, -2)[..., UNFOLD_TO_SWIN, :]
            value = value.reshape(*value.shape[:-2], 4 * width)
        converted[key] = value
    return converted


def _from_timm_or_official(state_dict: dict[str, torch.Tensor], downsample_at_end: bool) -> dict[str, torch.Tensor]:
    converted = {}
    for key, value in state_dict.items():
        if IGNORED.search(key):
            continue
        key = key.replace("patch_embed.proj.", "embeddings.projection.").replace("patch_embed.norm.", "embeddings.norm.")
        match = re.match(r"layers\.(\d+)\.downsample\.(.+)", key)
        if match:
            stage = int(match.group(1)) + (1 if downsample_at_end else 0)
            converted[f"stages.{stage}.downsample.{match.group(2)}"] = value
            continue
        key = re.sub(r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks.", key)
        key = re.sub(r"^norm\.", "layernorm.", key)
        converted[key] = value
    return converted


def to_florence_state_dict(state_dict: dict[str, torch.Tensor], source_format: str = "auto"):
    """Rename a Swin state dict to `FlorenceVisionModel` names; returns `(state_dict, detected_format)`."""
    detected = detect_format(state_dict)
    if source_format not in FORMATS:
        raise ValueError(f"Unknown format {source_format!r}; choose one of {FORMATS}")
    if source_format != "auto" and source_format != detected:
        raise ValueError(f"The checkpoint looks like the {detected!r} format, not {source_format!r} as claimed")
    if detected == "transformers":
        return _from_transformers(state_dict), detected
    if detected == "mmdet":
        return _from_timm_or_official(mmdet_to_official(state_dict), downsample_at_end=True), detected
    if detected == "unicl":
        prefix = "image_encoder." if any(k.startswith("image_encoder.") for k in state_dict) else "visual."
        return _from_timm_or_official(strip_prefix(state_dict, prefix), downsample_at_end=True), detected
    return _from_timm_or_official(state_dict, downsample_at_end=detected == "official"), detected


def infer_config(state_dict: dict[str, torch.Tensor], **overrides) -> FlorenceVisionConfig:
    """Read the Swin architecture off a state dict already in Florence names.

    Refuses (`ValueError`) a checkpoint with a missing stage or block, blocks of one stage with different head
    counts, or a final norm whose width says that stages are missing."""
    projection = state_dict["embeddings.projection.weight"]
    stages = contiguous_indices(state_dict, r"stages\.(\d+)\.blocks\.", "stage")
    depths = [len(contiguous_indices(state_dict, rf"stages\.{s}\.blocks\.(\d+)\.", f"block of stage {s} numbered"))
              for s in stages]
    num_heads = []
    for s, depth in zip(stages, depths):
        heads = {b: state_dict[f"stages.{s}.blocks.{b}.attn.relative_position_bias_table"].shape[1] for b in range(depth)}
        if len(set(heads.values())) != 1:
            raise ValueError(f"Inconsistent head counts in stage {s}: {heads} (block: heads)")
        num_heads.append(heads[0])
    width = projection.shape[0] * 2 ** (len(stages) - 1)
    if "layernorm.weight" in state_dict and state_dict["layernorm.weight"].shape[0] != width:
        raise ValueError(f"The final norm is {state_dict['layernorm.weight'].shape[0]} wide but the {len(stages)} "
                         f"stages found end at {width}: stages are missing")
    table_rows = state_dict["stages.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    window_size = (math.isqrt(table_rows) + 1) // 2
    fc1 = state_dict["stages.0.blocks.0.mlp.fc1.weight"]
    config = dict(
        embed_dim=projection.shape[0],
        num_channels=projection.shape[1],
        patch_size=projection.shape[-1],
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        mlp_ratio=fc1.shape[0] / fc1.shape[1],
        qkv_bias="stages.0.blocks.0.attn.qkv.bias" in state_dict,
        patch_embed="linear",
        downsample="merge",
    )
    config.update(overrides)
    return FlorenceVisionConfig(**config)


def swin_architecture(config) -> dict:
    """The fields checked against a checkpoint's claims and printed."""
    return {"embed_dim": config.embed_dim, "depths": list(config.depths), "num_heads": list(config.num_heads),
            "window_size": config.window_size}


def verify_swin(name: str, config, metadata: dict, source: str, expected: dict | None = None,
                paired_blocks: bool = True, within: tuple[str, ...] = ()) -> None:
    """Print the Swin architecture read from the weights and refuse odd depths or a field that the checkpoint's
    metadata (looked up under `within`) or `expected` (`--config`) states differently."""
    claims = [(f"{source}'s metadata", declared_fields(metadata, SWIN_ALIASES, within)), ("--config", expected or {})]
    verify_architecture(name, swin_architecture(config), claims, {"depths": config.depths} if paired_blocks else None)


def convert_swin(checkpoint: str | Path, source_format: str = "auto", expected: dict | None = None,
                 paired_blocks: bool = True, **config_overrides) -> FlorenceVisionModel:
    """Load a Swin checkpoint into a `FlorenceVisionModel`, failing loudly on any mismatch: weights that do not map,
    a stage with an odd number of blocks (`paired_blocks`), or an architecture other than the one the checkpoint's
    metadata (a folder's config.json, ...) or `expected` (e.g. `{"depths": [2, 2, 6, 2]}`) states."""
    raw, metadata = load_checkpoint(checkpoint)
    state_dict, detected = to_florence_state_dict(raw, source_format)
    config = infer_config(state_dict, **config_overrides)
    verify_swin(f"Swin ({detected})", config, metadata, str(checkpoint), expected, paired_blocks)
    model = FlorenceVisionModel(config)
    load_strict(model, state_dict, f"Swin ({detected})")
    return model.eval()


def main(argv=None):
    parser = converter_parser(__doc__, FORMATS, "FlorenceVisionModel", swin=True)
    parser.add_argument("--image-size", type=int, default=224, help="training resolution recorded in the config")
    parser.add_argument("--drop-path-rate", type=float, default=0.1, help="stochastic depth for later fine-tuning")
    args = parser.parse_args(argv)
    model = run_converter(
        lambda: convert_swin(args.checkpoint, args.format, expected_config(args.config, "vision_config"),
                             not args.unpaired_blocks, image_size=args.image_size, drop_path_rate=args.drop_path_rate)
    )
    write_converted(model, args.output, args.checkpoint)
    config = model.config
    print(
        f"Wrote {args.output}: Swin embed_dim={config.embed_dim} depths={config.depths} heads={config.num_heads} "
        f"window={config.window_size} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)"
    )


if __name__ == "__main__":
    main()
