"""Convert a whole UniCL checkpoint (microsoft/UniCL) into a `FlorenceModel` folder with its processor and card.

A UniCL checkpoint holds a Swin image encoder (`image_encoder.*`, official Swin layout), a CLIP-style text encoder
(`text_encoder.*`, `nn.MultiheadAttention` blocks, LayerNorm eps 1e-12, QuickGELU), the projections as matrices
applied as `x @ W` (`image_projection` [D_image, P], `text_projection` [D_text, P]) and `logit_scale` (log space).
Older / KLITE names (`visual.*`, `text.*`, `lang_encoder.*`, `vision_projection`) are read too. The file is read with
`torch.load(weights_only=True)` (or safetensors); nothing else is accepted.

    python conversion/convert_unicl.py --checkpoint in1k_yfcc14m.pth --output florence-unicl-swin-t
"""

import re
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conversion import convert_clip_text, convert_swin  # noqa: E402
from conversion.checkpoint_io import (  # noqa: E402
    converter_parser,
    declared_fields,
    expected_config,
    load_checkpoint,
    load_strict,
    verify_architecture,
)
from modeling_florence import FlorenceConfig, FlorenceModel, FlorenceProcessor  # noqa: E402
from modeling_florence.model_card import write_model_card  # noqa: E402

# Older UniCL / KLITE names -> the released UniCLModel attribute names.
LEGACY_PREFIXES = (("visual.", "image_encoder."), ("lang_encoder.", "text_encoder."), ("text.", "text_encoder."),
                   ("vision_projection", "image_projection"))
UNICL_TEXT = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-12}


def normalise_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released UniCL names, with the text blocks under `transformer.resblocks` as open_clip has them."""
    renamed = {}
    for key, value in state_dict.items():
        for old, new in LEGACY_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        key = re.sub(r"^text_encoder\.resblocks\.", "text_encoder.transformer.resblocks.", key)
        renamed[key] = value
    return renamed


def split_checkpoint(state_dict: dict[str, torch.Tensor]):
    """`(vision, text, image_projection, text_projection, logit_scale)` of a UniCL state dict."""
    state_dict = normalise_names(state_dict)
    required = ("image_projection", "text_projection", "logit_scale")
    missing = [key for key in required if key not in state_dict]
    towers = {prefix: any(k.startswith(prefix) for k in state_dict) for prefix in ("image_encoder.", "text_encoder.")}
    if missing or not all(towers.values()):
        absent = missing + [prefix + "*" for prefix, present in towers.items() if not present]
        raise ValueError(f"Not a UniCL checkpoint: missing {absent} (keys found: {sorted(state_dict)[:6]} ...)")
    vision = {k: v for k, v in state_dict.items() if k.startswith("image_encoder.")}
    text = {k: v for k, v in state_dict.items() if k.startswith("text_encoder.")}
    return vision, text, state_dict["image_projection"], state_dict["text_projection"], state_dict["logit_scale"]


def verify_unicl(vision_config, text_config, metadata: dict, source: str, expected: dict | None,
                 paired_blocks: bool) -> None:
    """Print both towers' architectures and refuse odd Swin depths or a field that the checkpoint's metadata (UniCL's
    `MODEL.IMAGE_ENCODER` / `MODEL.TEXT_ENCODER` config, a FlorenceConfig) or `expected` states differently."""
    expected = expected or {}
    inferred = {f"vision {k}": v for k, v in convert_swin.swin_architecture(vision_config).items()}
    inferred.update({f"text {k}": v for k, v in convert_clip_text.text_architecture(text_config).items()})
    claims = []
    for claim_source, tree in ((f"{source}'s metadata", metadata), ("--config", expected)):
        vision = declared_fields(tree, convert_swin.SWIN_ALIASES, ("image_encoder", "vision_config"), fallback=True)
        text = declared_fields(tree, convert_clip_text.TEXT_ALIASES, ("text_encoder", "lang_encoder", "text_config"))
        claims.append((claim_source, {**{f"vision {k}": v for k, v in vision.items()},
                                      **{f"text {k}": v for k, v in text.items()}}))
    verify_architecture("UniCL", inferred, claims, {"vision depths": vision_config.depths} if paired_blocks else None)


def convert_unicl(checkpoint: str | Path, image_size: int = 224, text_heads: int | None = None,
                  expected: dict | None = None, paired_blocks: bool = True) -> FlorenceModel:
    """Load a UniCL checkpoint into a `FlorenceModel`, failing loudly on anything that does not match (including an
    architecture other than the one its metadata or `expected`, a FlorenceConfig dict, states)."""
    raw, metadata = load_checkpoint(checkpoint)
    vision, text, image_projection, text_projection, logit_scale = split_checkpoint(raw)
    vision_state, _ = convert_swin.to_florence_state_dict(vision, "unicl")
    text_state, _ = convert_clip_text.to_florence_state_dict(text, "open_clip")
    vision_config = convert_swin.infer_config(vision_state, image_size=image_size)
    text_config = convert_clip_text.infer_config(text_state, num_attention_heads=text_heads, **UNICL_TEXT)
    verify_unicl(vision_config, text_config, metadata, str(checkpoint), expected, paired_blocks)
    if image_projection.shape[0] != vision_config.hidden_size or text_projection.shape[0] != text_config.hidden_size:
        raise ValueError(
            f"Projection shapes {tuple(image_projection.shape)} / {tuple(text_projection.shape)} do not match the "
            f"towers' widths {vision_config.hidden_size} / {text_config.hidden_size}"
        )
    if image_projection.shape[1] != text_projection.shape[1]:
        raise ValueError(f"Image and text projections end in different sizes: {image_projection.shape[1]} vs "
                         f"{text_projection.shape[1]}")
    config = FlorenceConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        projection_dim=image_projection.shape[1],
        logit_scale_init_value=float(logit_scale),
    )
    model = FlorenceModel(config)
    state = {f"vision_model.{k}": v for k, v in vision_state.items()}
    state.update({f"text_model.{k}": v for k, v in text_state.items()})
    # UniCL applies its projections as `x @ W`; a bias-free nn.Linear computes `x @ weight.T`.
    state["visual_projection.weight"] = image_projection.t().contiguous()
    state["text_projection.weight"] = text_projection.t().contiguous()
    state["logit_scale"] = logit_scale.reshape(())
    load_strict(model, state, "UniCL")
    return model.eval()


def main(argv=None) -> int:
    parser = converter_parser(__doc__, ("auto",), "FlorenceModel", swin=True)
    parser.add_argument("--image-size", type=int, default=224, help="training resolution (UniCL: 224)")
    parser.add_argument("--text-heads", type=int, default=None, help="text attention heads (default: width / 64)")
    args = parser.parse_args(argv)
    model = convert_unicl(args.checkpoint, image_size=args.image_size, text_heads=args.text_heads,
                          expected=expected_config(args.config), paired_blocks=not args.unpaired_blocks)
    output = Path(args.output)
    model.save_pretrained(output)
    # UniCL normalises with ImageNet statistics; CLIP's resize + centre crop at the training resolution.
    FlorenceProcessor.from_defaults(image_size=args.image_size, normalization="imagenet").save_pretrained(output)
    write_model_card(output, base_model=f"microsoft/UniCL ({Path(args.checkpoint).name})",
                     description="UniCL (Yang et al., 2022) converted to a Florence two-tower model.")
    parameters = sum(p.numel() for p in model.parameters())
    print(f"Converted UniCL checkpoint {args.checkpoint} -> {output} ({parameters / 1e6:.1f}M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
