# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Convert a Dynamic Head ATSS detector on a Swin backbone to a closed-set `FlorenceForObjectDetection` folder.

Two layouts are read (detected from the key names, or forced with `--format`):

- **detectron2**: the official microsoft/DynamicHead checkpoints (e.g. `dyhead_swint_atss_fpn_2x_ms`), optionally
  wrapped in `{"model": ...}`. Swin under `backbone.backbone.bottom_up.` (official Swin names, patch merging at the
  end of a stage, one output norm `normI` per used stage), FPN `fpn_lateral3..5` / `fpn_output3..5` /
  `top_block.p6,p7`, DyHead blocks `backbone.dyhead_tower.N.{DyConv.{0,1,2},AttnConv.1,relu.fc.{0,2},offset}`
  (DyConv 0/1/2 = high/mid/low branch) and the head `head.{cls_logits,bbox_pred,centerness,scales.L.scale}`.
  Sets `upsampled_offset_mode="detectron2"` (the CUDA kernel reads the high branch's offsets flat).
- **mmdet**: mmdetection's `atss_swin-l-p4-w12_fpn_dyhead_mstrain_2x_coco` (wrapped in `{"state_dict": ...}`).
  Swin under `backbone.` (mmdet names, see `convert_swin.mmdet_to_official`), FPN `neck.0.lateral_convs.I.conv` /
  `neck.0.fpn_convs.I.conv` (the two after the outputs are P6 and P7), blocks
  `neck.1.dyhead_blocks.N.{spatial_conv_{high,mid,low},spatial_conv_offset,scale_attn_module.1,task_attn_module}`
  and `bbox_head.{atss_cls,atss_reg,atss_centerness,scales.L.scale}`. Its deformable convolutions have no bias (they
  are followed by GroupNorm): ours get a zero bias. Its DyReLU uses 1x1 convolutions: reshaped to our Linear layers.
  Sets `upsampled_offset_mode="mmdet"` (the high branch's offsets are cropped).

The architecture (Swin shape, used stages, FPN width, DyHead blocks, classes) is read from the tensor shapes; every
source weight must map and every weight of the model must be filled, else a `ValueError` names what is wrong.
The image tower's final LayerNorm, which detection does not use, is set to the last stage's output norm (the same
place in the network), so the tower of the converted folder outputs what the detector sees.

The P6/P7 levels: `FlorenceDetectionFPN` computes P6 = conv(P5 output) and P7 = conv(ReLU(P6)) or conv(P6)
(`relu_before_p7`).
- detectron2's `LastLevelP6P7(..., "p5")`, as the official Swin builders use: P7 after a ReLU (`relu_before_p7=True`).
- mmdet's FPN (`add_extra_convs="on_output"`, as the DyHead configs) has `relu_before_extra_convs=False`: P7 =
  conv(P6) (`relu_before_p7=False`).
- A P6 computed from the backbone's C5 (detectron2 "res5", mmdet `add_extra_convs="on_input"`) cannot be represented:
  refused (recognised when C5 and the FPN differ in width).

    python conversion/convert_dyhead.py --checkpoint dyhead_swint_atss_fpn_2x_ms.pth --output dyhead-swin-t
    python conversion/convert_dyhead.py --checkpoint atss_swin-l-p4-w12_fpn_dyhead_mstrain_2x_coco.pth \\
        --output dyhead-swin-l --format mmdet
"""

import json
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
from conversion.convert_swin import SWIN_ALIASES, infer_config, swin_architecture, to_florence_state_dict  # noqa: E402
from modeling_florence import (  # noqa: E402
    FlorenceDetectionConfig,
    FlorenceDetectionImageProcessor,
    FlorenceForObjectDetection,
)
from modeling_florence.configuration_florence_detection import STAGE_NAMES  # noqa: E402

FORMATS = ("auto", "detectron2", "mmdet")
BRANCHES = ("high", "mid", "low")  # DyConv.0, 1, 2 of the official block

# Per layout: where the Swin backbone lives, and the (pattern, replacement) renames of the DyHead blocks and the head,
# matched with `re.fullmatch` (the FPN's per-level names are listed by `_fpn_levels`).
D2_BLOCK = r"backbone\.dyhead_tower\.(\d+)\."
DETECTRON2_RENAMES = (
    *((D2_BLOCK + rf"DyConv\.{index}\.{theirs}\.(weight|bias)", rf"dyhead.\1.spatial_conv_{branch}.{ours}.\2")
      for index, branch in enumerate(BRANCHES) for theirs, ours in (("conv", "conv"), ("bn", "norm"))),
    (D2_BLOCK + r"AttnConv\.1\.(weight|bias)", r"dyhead.\1.scale_attention.conv.\2"),
    (D2_BLOCK + r"relu\.fc\.0\.(weight|bias)", r"dyhead.\1.task_attention.reduce.\2"),
    (D2_BLOCK + r"relu\.fc\.2\.(weight|bias)", r"dyhead.\1.task_attention.expand.\2"),
    (D2_BLOCK + r"offset\.(weight|bias)", r"dyhead.\1.spatial_conv_offset.\2"),
    (r"backbone\.(?:backbone\.)?top_block\.(p6|p7)\.(weight|bias)", r"fpn.\1.\2"),
    (r"head\.cls_logits\.(weight|bias)", r"head.classifier.cls_logits.\1"),
    (r"head\.(bbox_pred|centerness)\.(weight|bias)", r"head.\1.\2"),
    (r"head\.scales\.(\d+)\.scale", r"head.scales.\1.scale"),
)
MM_BLOCK = r"neck\.1\.dyhead_blocks\.(\d+)\."
MMDET_RENAMES = (
    (MM_BLOCK + r"spatial_conv_(high|mid|low)\.conv\.weight", r"dyhead.\1.spatial_conv_\2.conv.weight"),
    (MM_BLOCK + r"spatial_conv_(high|mid|low)\.norm\.(weight|bias)", r"dyhead.\1.spatial_conv_\2.norm.\3"),
    (MM_BLOCK + r"spatial_conv_offset\.(weight|bias)", r"dyhead.\1.spatial_conv_offset.\2"),
    (MM_BLOCK + r"scale_attn_module\.1\.(weight|bias)", r"dyhead.\1.scale_attention.conv.\2"),
    (MM_BLOCK + r"task_attn_module\.conv1\.conv\.(weight|bias)", r"dyhead.\1.task_attention.reduce.\2"),
    (MM_BLOCK + r"task_attn_module\.conv2\.conv\.(weight|bias)", r"dyhead.\1.task_attention.expand.\2"),
    (r"neck\.0\.lateral_convs\.(\d+)\.conv\.(weight|bias)", r"fpn.lateral_convs.\1.\2"),
    (r"bbox_head\.atss_cls\.(weight|bias)", r"head.classifier.cls_logits.\1"),
    (r"bbox_head\.atss_reg\.(weight|bias)", r"head.bbox_pred.\1"),
    (r"bbox_head\.atss_centerness\.(weight|bias)", r"head.centerness.\1"),
    (r"bbox_head\.scales\.(\d+)\.scale", r"head.scales.\1.scale"),
)
LAYOUTS = {
    "detectron2": dict(backbone=r"backbone\.(?:backbone\.)?bottom_up\.", renames=DETECTRON2_RENAMES,
                       offset_mode="detectron2", relu_before_p7=True),
    "mmdet": dict(backbone=r"backbone\.", renames=MMDET_RENAMES, offset_mode="mmdet", relu_before_p7=False),
}


def detect_format(state_dict: dict[str, torch.Tensor]) -> str:
    if any(re.match(D2_BLOCK, key) for key in state_dict):
        return "detectron2"
    if any(re.match(MM_BLOCK, key) for key in state_dict):
        return "mmdet"
    raise ValueError("Not a DyHead checkpoint: found neither 'backbone.dyhead_tower.N.' (detectron2, "
                     f"microsoft/DynamicHead) nor 'neck.1.dyhead_blocks.N.' (mmdetection) among keys such as "
                     f"{sorted(state_dict)[:5]}")


def _fpn_levels(state_dict: dict[str, torch.Tensor], source_format: str) -> dict[str, str]:
    """The FPN's per-level convolutions of one layout -> ours (`lateral_convs.I`, `output_convs.I`, `p6`, `p7`)."""
    renames = {}
    if source_format == "detectron2":  # fpn_lateral3..5: detectron2 numbers levels by log2(stride)
        levels = sorted({int(m.group(2)) for key in state_dict
                         if (m := re.fullmatch(r"(backbone\.(?:backbone\.)?)fpn_lateral(\d)\.weight", key))})
        for index, level in enumerate(levels):
            for source, target in ((f"fpn_lateral{level}", f"lateral_convs.{index}"),
                                   (f"fpn_output{level}", f"output_convs.{index}")):
                for prefix in ("backbone.backbone.", "backbone."):
                    renames.update({f"{prefix}{source}.{leaf}": f"fpn.{target}.{leaf}" for leaf in ("weight", "bias")})
        return renames
    count = len(contiguous_indices(state_dict, r"neck\.0\.lateral_convs\.(\d+)\.", "FPN lateral conv"))
    names = [f"output_convs.{i}" for i in range(count)] + ["p6", "p7"]
    for index, name in enumerate(names):
        renames.update({f"neck.0.fpn_convs.{index}.conv.{leaf}": f"fpn.{name}.{leaf}" for leaf in ("weight", "bias")})
    return renames


def rename(state_dict: dict[str, torch.Tensor], source_format: str) -> dict[str, torch.Tensor]:
    """Source names -> `FlorenceForObjectDetection` names (`vision_model.*` via the Swin converter, the per-stage
    output norms to `hidden_states_norms.stageN`); a `ValueError` lists every key that matches nothing."""
    layout = LAYOUTS[source_format]
    backbone_prefix = next((m.group(0) for key in state_dict if (m := re.match(layout["backbone"], key))
                            and "patch_embed." in key), None)
    if backbone_prefix is None:
        raise ValueError(f"No Swin backbone in this {source_format} DyHead checkpoint: no '{layout['backbone']}"
                         "patch_embed.*' key (only Swin backbones can be converted; ResNet ones are not supported)")
    backbone = strip_prefix(state_dict, backbone_prefix)
    output_norms = {key: backbone.pop(key) for key in list(backbone) if re.fullmatch(r"norm\d\.(weight|bias)", key)}
    swin, _ = to_florence_state_dict(backbone, "official" if source_format == "detectron2" else "mmdet")
    converted = {f"vision_model.{key}": value for key, value in swin.items()}
    for key, value in output_norms.items():  # normI: the output norm of Swin stage I (0-based) = our stage I + 1
        converted[f"hidden_states_norms.{STAGE_NAMES[int(key[4])]}.{key[6:]}"] = value

    fpn = _fpn_levels(state_dict, source_format)
    unknown = []
    for key, value in state_dict.items():
        if key.startswith(backbone_prefix):
            continue
        if key in fpn:
            converted[fpn[key]] = value
            continue
        for pattern, replacement in layout["renames"]:
            if re.fullmatch(pattern, key):
                converted[re.sub(pattern, replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"Unknown weights for the {source_format} DyHead layout: {sorted(unknown)[:12]}"
                         f"{f' (and {len(unknown) - 12} more)' if len(unknown) > 12 else ''}; refusing to convert "
                         "a different model")
    for key in list(converted):
        value = converted[key]
        if key.startswith("head.scales.") and value.numel() == 1:  # detectron2: a 1-element vector per level
            converted[key] = value.reshape(())
        elif re.fullmatch(r"dyhead\.\d+\.task_attention\.(reduce|expand)\.weight", key) and value.ndim == 4:
            converted[key] = value.flatten(1)  # mmdet's 1x1 convolutions -> Linear
        elif re.fullmatch(r"dyhead\.\d+\.spatial_conv_(high|mid|low)\.conv\.weight", key):
            converted.setdefault(key[: -len("weight")] + "bias", value.new_zeros(value.shape[0]))  # mmdet: no bias
    return converted


def infer_detection_config(state_dict: dict[str, torch.Tensor], source_format: str,
                           id2label: dict[int, str] | None = None, **vision_overrides) -> FlorenceDetectionConfig:
    """The detector's config from converted tensor shapes (GroupNorm groups are not stored: 16, as both sources)."""
    shape_keys = ("fpn.lateral_convs.0.weight", "fpn.p6.weight", "head.classifier.cls_logits.weight")
    if missing := [key for key in shape_keys if key not in state_dict]:
        raise ValueError(f"The checkpoint lacks the weights that give the detector's shape: missing {missing}")
    vision = infer_config(strip_prefix(state_dict, "vision_model."), **vision_overrides)
    out_features = [stage for stage in STAGE_NAMES if f"hidden_states_norms.{stage}.weight" in state_dict]
    laterals = contiguous_indices(state_dict, r"fpn\.lateral_convs\.(\d+)\.", "FPN lateral conv")
    if len(laterals) != len(out_features):
        raise ValueError(f"The FPN has {len(laterals)} lateral convolutions but the backbone {len(out_features)} "
                         f"output norms ({out_features}): refusing to convert a different model")
    channels = state_dict["fpn.lateral_convs.0.weight"].shape[0]
    p6_inputs = state_dict["fpn.p6.weight"].shape[1]
    if p6_inputs != channels:
        raise ValueError(f"P6 is computed from {p6_inputs} channels, not from the {channels}-channel P5: a P6 from the "
                         "backbone's C5 (detectron2 'res5', mmdet add_extra_convs='on_input') cannot be represented "
                         "by FlorenceDetectionFPN (P6 = conv(P5))")
    num_labels = state_dict["head.classifier.cls_logits.weight"].shape[0]
    if id2label is not None and len(id2label) != num_labels:
        raise ValueError(f"The label list has {len(id2label)} names but the classifier has {num_labels} classes")
    return FlorenceDetectionConfig(
        vision_config=vision.to_dict(), out_features=out_features, fpn_channels=channels,
        num_dyhead_blocks=len(contiguous_indices(state_dict, r"dyhead\.(\d+)\.", "DyHead block")),
        upsampled_offset_mode=LAYOUTS[source_format]["offset_mode"],
        relu_before_p7=LAYOUTS[source_format]["relu_before_p7"], num_labels=num_labels,
        **({"id2label": id2label} if id2label else {}),
    )


DETECTOR_ALIASES = {"num_dyhead_blocks": ("num_dyhead_blocks", "num_blocks", "num_convs"),
                    "num_labels": ("num_labels", "num_classes"), "fpn_channels": ("fpn_channels", "out_channels")}


def verify_dyhead(config, metadata: dict, source: str, expected: dict | None, paired_blocks: bool) -> None:
    """Print the detector's architecture and refuse odd Swin depths or a field that the checkpoint's metadata (mmdet's
    config text, ...) or `expected` (a FlorenceDetectionConfig dict) states differently."""
    inferred = {f"vision {k}": v for k, v in swin_architecture(config.vision_config).items()}
    inferred.update({key: getattr(config, key) for key in DETECTOR_ALIASES})
    claims = []
    for claim_source, tree in ((f"{source}'s metadata", metadata), ("--config", expected or {})):
        claim = declared_fields(tree, SWIN_ALIASES, ("vision_config", "backbone"), "vision ", fallback=True)
        claim.update(declared_fields(tree, DETECTOR_ALIASES))
        claims.append((claim_source, claim))
    verify_architecture("DyHead", inferred, claims,
                        {"vision depths": config.vision_config.depths} if paired_blocks else None)


def convert_dyhead(checkpoint, source_format: str = "auto", id2label: dict[int, str] | None = None,
                   expected: dict | None = None, paired_blocks: bool = True,
                   **vision_overrides) -> FlorenceForObjectDetection:
    """A `FlorenceForObjectDetection` holding every weight of a DyHead checkpoint (a path or a state dict); refuses
    odd Swin depths (`paired_blocks`) and an architecture other than the one its metadata or `expected` states."""
    raw, metadata = (checkpoint, {}) if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    if source_format not in FORMATS:
        raise ValueError(f"Unknown format {source_format!r}; choose one of {FORMATS}")
    detected = detect_format(raw)
    if source_format not in ("auto", detected):
        raise ValueError(f"The checkpoint looks like the {detected!r} layout, not {source_format!r} as claimed")
    state_dict = rename(raw, detected)
    config = infer_detection_config(state_dict, detected, id2label, **vision_overrides)
    verify_dyhead(config, metadata, "the checkpoint" if isinstance(checkpoint, dict) else str(checkpoint), expected,
                  paired_blocks)
    last_norm = f"hidden_states_norms.{STAGE_NAMES[len(config.vision_config.depths) - 1]}."
    for leaf in ("weight", "bias"):  # the tower's final norm (unused by detection) = the last stage's output norm
        if last_norm + leaf in state_dict:
            state_dict.setdefault(f"vision_model.layernorm.{leaf}", state_dict[last_norm + leaf])
    model = FlorenceForObjectDetection(config)
    load_strict(model, state_dict, f"DyHead ({detected})")
    return model.eval()


def detection_processor(config) -> FlorenceDetectionImageProcessor:
    """The peers' test-time preprocessing (detectron2 DynamicHead / mmdet DyHead): short side 800, long side at most
    1333, ImageNet statistics (their PIXEL_MEAN / STD in 0-255 RGB), with the detector's post-processing settings."""
    return FlorenceDetectionImageProcessor.from_detection_config(
        config, size={"shortest_edge": 800, "longest_edge": 1333}, normalization="imagenet")


def main(argv=None):
    parser = converter_parser(__doc__, FORMATS, "FlorenceForObjectDetection", swin=True)
    parser.add_argument("--labels", help="JSON list of the class names, in the classifier's order")
    parser.add_argument("--drop-path-rate", type=float, default=0.2, help="stochastic depth for later fine-tuning")
    args = parser.parse_args(argv)
    id2label = dict(enumerate(json.loads(Path(args.labels).read_text()))) if args.labels else None
    model = run_converter(lambda: convert_dyhead(args.checkpoint, args.format, id2label, expected_config(args.config),
                                                 not args.unpaired_blocks, drop_path_rate=args.drop_path_rate))
    write_converted(model, args.output, args.checkpoint)
    detection_processor(model.config).save_pretrained(args.output)  # what the object-detection pipeline loads
    config = model.config
    print(f"Wrote {args.output} (with its image processor): Swin {config.vision_config.embed_dim} x {config.vision_config.depths}, FPN "
          f"{config.fpn_channels} on {config.out_features}, {config.num_dyhead_blocks} DyHead blocks "
          f"({config.upsampled_offset_mode} offsets), {config.num_labels} classes "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
