"""Convert a CLIP-style text tower to a `FlorenceTextModel` folder.

Reads Transformers `CLIPTextModel` / `CLIPModel` weights (folder or file) and open_clip / OpenAI CLIP / UniCL
state dicts (`token_embedding`, `positional_embedding`, `transformer.resblocks.N...`). The architecture is read from the
tensor shapes; the activation and LayerNorm epsilon are not stored in weights, so they are flags (Transformers
folders carry them in their config.json, which is used when present):

    python conversion/convert_clip_text.py --checkpoint openai-clip-vit-base-patch32/ --output clip-text
    python conversion/convert_clip_text.py --checkpoint open_clip.pt --output text --hidden-act gelu
"""

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
    folder_config,
    load_checkpoint,
    load_strict,
    run_converter,
    strip_prefix,
    verify_architecture,
    write_converted,
)
from modeling_florence import FlorenceTextConfig, FlorenceTextModel  # noqa: E402

FORMATS = ("auto", "transformers", "open_clip")
# Prefixes under which open_clip-style towers appear: open_clip/OpenAI CLIP (none), CustomTextCLIP, UniCL, KLITE.
OPEN_CLIP_PREFIXES = ("", "text.", "text_encoder.", "lang_encoder.")
RESBLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def detect_format(state_dict: dict[str, torch.Tensor]) -> tuple[str, str]:
    """`(format, prefix)` of the text tower inside `state_dict`."""
    for key in state_dict:
        if key.endswith("embeddings.token_embedding.weight"):
            return "transformers", key[: -len("embeddings.token_embedding.weight")]
    for prefix in OPEN_CLIP_PREFIXES:
        if f"{prefix}token_embedding.weight" in state_dict and f"{prefix}positional_embedding" in state_dict:
            return "open_clip", prefix
    raise ValueError(
        "Not a CLIP text tower: found neither 'text_model.embeddings.token_embedding.weight' (Transformers) nor "
        f"'token_embedding.weight' + 'positional_embedding' (open_clip/UniCL) among keys such as {sorted(state_dict)[:5]}"
    )


def _from_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {
        "embeddings.token_embedding.weight": state_dict["token_embedding.weight"],
        "embeddings.position_embedding.weight": state_dict["positional_embedding"],
        "final_layer_norm.weight": state_dict["ln_final.weight"],
        "final_layer_norm.bias": state_dict["ln_final.bias"],
    }
    for key, value in state_dict.items():
        match = re.match(r"transformer\.resblocks\.(\d+)\.(.+)", key)
        if not match:
            continue
        layer, name = match.groups()
        prefix = f"encoder.layers.{layer}."
        fused = re.match(r"attn\.in_proj_(weight|bias)", name)
        if fused:
            for projection, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[f"{prefix}self_attn.{projection}.{fused.group(1)}"] = chunk
            continue
        for old, new in RESBLOCK_RENAMES.items():
            if name.startswith(old + "."):
                name = new + name[len(old) :]
                break
        converted[prefix + name] = value
    return converted


def to_florence_state_dict(state_dict: dict[str, torch.Tensor], source_format: str = "auto"):
    """Rename a text-tower state dict to `FlorenceTextModel` names; returns `(state_dict, detected_format)`."""
    if source_format not in FORMATS:
        raise ValueError(f"Unknown format {source_format!r}; choose one of {FORMATS}")
    detected, prefix = detect_format(state_dict)
    if source_format not in ("auto", detected):
        raise ValueError(f"The checkpoint looks like the {detected!r} format, not {source_format!r} as claimed")
    tower = strip_prefix(state_dict, prefix)
    if detected == "open_clip":
        return _from_open_clip(tower), detected
    wanted = ("embeddings.", "encoder.", "final_layer_norm.")
    return {k: v for k, v in tower.items() if k.startswith(wanted) and not k.endswith("position_ids")}, detected


def infer_config(state_dict: dict[str, torch.Tensor], **overrides) -> FlorenceTextConfig:
    """Read the text architecture off a state dict already in Florence names."""
    token_embedding = state_dict["embeddings.token_embedding.weight"]
    layers = contiguous_indices(state_dict, r"encoder\.layers\.(\d+)\.", "layer")
    config = dict(
        vocab_size=token_embedding.shape[0],
        hidden_size=token_embedding.shape[1],
        max_position_embeddings=state_dict["embeddings.position_embedding.weight"].shape[0],
        intermediate_size=state_dict["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(layers),
        # The head count is not stored in weights: 64-dimensional heads, as in every CLIP text tower.
        num_attention_heads=max(1, token_embedding.shape[1] // 64),
    )
    config.update({k: v for k, v in overrides.items() if v is not None})
    return FlorenceTextConfig(**config)


ARCHITECTURE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
SETTING_KEYS = ("hidden_act", "layer_norm_eps", "num_attention_heads", "eos_token_id", "bos_token_id", "pad_token_id")
# What a checkpoint's metadata may call the architecture fields (Transformers, open_clip / UniCL configs).
TEXT_ALIASES = {"hidden_size": ("hidden_size", "width"), "intermediate_size": ("intermediate_size",),
                "num_hidden_layers": ("num_hidden_layers", "layers"),
                "num_attention_heads": ("num_attention_heads", "heads")}


def text_architecture(config) -> dict:
    return {key: getattr(config, key) for key in ARCHITECTURE_KEYS}


def convert_clip_text(checkpoint: str | Path, source_format: str = "auto", expected: dict | None = None,
                      **config_overrides) -> FlorenceTextModel:
    """Load a CLIP-style text tower into a `FlorenceTextModel`, failing loudly on any mismatch.

    A Transformers folder's config.json supplies what weights do not store (activation, eps, heads, special
    tokens); flags override it, but an architecture that then disagrees with it (e.g. another head count, a layer
    missing at the end) is refused, as is one that differs from the checkpoint's other metadata or from `expected`
    (`--config`: e.g. `{"num_hidden_layers": 12}`)."""
    raw, metadata = load_checkpoint(checkpoint)
    state_dict, detected = to_florence_state_dict(raw, source_format)
    declared = folder_config(checkpoint, "text_config")
    overrides = {key: declared[key] for key in SETTING_KEYS if key in declared}
    overrides.update({k: v for k, v in config_overrides.items() if v is not None})
    model = FlorenceTextModel(infer_config(state_dict, **overrides))
    claims = [(f"{checkpoint}/config.json", {k: declared[k] for k in ARCHITECTURE_KEYS if k in declared}),
              (f"{checkpoint}'s metadata", declared_fields(metadata, TEXT_ALIASES, ("text_config", "text", "text_cfg"))),
              ("--config", expected or {})]
    verify_architecture(f"CLIP text ({detected})", text_architecture(model.config), claims)
    load_strict(model, state_dict, f"CLIP text ({detected})")
    return model.eval()


def main(argv=None):
    parser = converter_parser(__doc__, FORMATS, "FlorenceTextModel")
    parser.add_argument("--hidden-act", default=None, help="quick_gelu (OpenAI CLIP, UniCL) or gelu (most open_clip)")
    parser.add_argument("--layer-norm-eps", type=float, default=None, help="1e-5 (CLIP) or 1e-12 (UniCL)")
    parser.add_argument("--num-attention-heads", type=int, default=None, help="default: width / 64")
    args = parser.parse_args(argv)
    model = run_converter(
        lambda **kwargs: convert_clip_text(args.checkpoint, args.format, expected_config(args.config, "text_config"),
                                           **kwargs),
        hidden_act=args.hidden_act,
        layer_norm_eps=args.layer_norm_eps,
        num_attention_heads=args.num_attention_heads,
    )
    write_converted(model, args.output, args.checkpoint)
    config = model.config
    print(
        f"Wrote {args.output}: width={config.hidden_size} layers={config.num_hidden_layers} "
        f"heads={config.num_attention_heads} act={config.hidden_act} eps={config.layer_norm_eps}. "
        "Projections and logit scale belong to the two-tower model and are not part of this folder."
    )


if __name__ == "__main__":
    main()
