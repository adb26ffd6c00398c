"""Convert a METER checkpoint (Swin image tower + RoBERTa text encoder, PyTorch Lightning `state_dict`) to a
`FlorenceForVQA` folder (or `FlorenceForVisionLanguagePretraining` for a pretraining checkpoint without a VQA head).

The Swin tower becomes a `FlorenceVisionModel` in Swin mode (`patch_embed="linear"`, `downsample="merge"`), the
RoBERTa encoder a Transformers `RobertaModel` text tower, the fusion layers, poolers and heads the adapter's. The
architecture is read from the tensor shapes. METER's CLIP-ViT checkpoints are refused: Florence's adapter runs on a
(Co)Swin image tower.

    python conversion/convert_meter.py --checkpoint meter_swin_vqa.ckpt --output florence-vqa-meter-swin \
        [--answers answer2label.json] [--image-size 384]
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
    swin_size,
    verify_architecture,
    write_converted,
)
from conversion.convert_swin import SWIN_ALIASES, infer_config, swin_architecture, to_florence_state_dict  # noqa: E402
from modeling_florence import FlorenceForVisionLanguagePretraining, FlorenceForVQA, FlorenceVQAConfig  # noqa: E402

FORMATS = ("auto", "meter-swin")
# METER's BertCrossLayer names -> FlorenceFusionLayer's.
LAYER_RENAMES = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "self_attn_layer_norm",
    "crossattention.self.query": "cross_attn.q_proj",
    "crossattention.self.key": "cross_attn.k_proj",
    "crossattention.self.value": "cross_attn.v_proj",
    "crossattention.output.dense": "cross_attn.out_proj",
    "crossattention.output.LayerNorm": "cross_attn_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "output.LayerNorm": "final_layer_norm",
}
HEAD_RENAMES = {
    "cross_modal_text_transform.": "fusion.text_transform.",
    "cross_modal_image_transform.": "fusion.image_transform.",
    "token_type_embeddings.": "fusion.token_type_embeddings.",
    "cross_modal_text_pooler.dense.": "fusion.text_pooler.dense.",
    "cross_modal_image_pooler.dense.": "fusion.image_pooler.dense.",
    "vqa_classifier.0.": "vqa_head.dense.",
    "vqa_classifier.1.": "vqa_head.layer_norm.",
    "vqa_classifier.3.": "vqa_head.classifier.",
    "itm_score.fc.": "itm_head.",
    "mlm_score.transform.dense.": "mlm_head.dense.",
    "mlm_score.transform.LayerNorm.": "mlm_head.layer_norm.",
    "mlm_score.decoder.weight": "mlm_head.decoder.weight",
    "mlm_score.bias": "mlm_head.decoder.bias",
}
CLIP_MARKERS = re.compile(r"^vit_model\.(visual\.|conv1\.|class_embedding|positional_embedding|transformer\.resblocks)")


def check_variant(state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse what this converter cannot map, naming it."""
    if any(CLIP_MARKERS.match(key) for key in state_dict):
        raise ValueError(
            "This is METER's CLIP-ViT variant (vit_model.visual.* / conv1 / class_embedding keys). Florence's METER "
            "adapter runs on a Swin/CoSwin image tower, so only METER's Swin checkpoints (swin32_base224/384, "
            "vit_model.patch_embed/layers.*) can be converted"
        )
    if "vit_model.patch_embed.proj.weight" not in state_dict:
        raise ValueError("Not a METER Swin checkpoint: no 'vit_model.patch_embed.proj.weight' key")
    if not any(key.startswith("text_transformer.encoder.layer.") for key in state_dict):
        raise ValueError("Not a METER RoBERTa checkpoint: no 'text_transformer.encoder.layer.*' keys")


def rename(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """METER names -> Florence adapter names (vision via the Swin converter, which also drops Swin's buffers)."""
    vision, _ = to_florence_state_dict(strip_prefix(state_dict, "vit_model."))
    converted = {f"vision_model.{key}": value for key, value in vision.items()}
    for key, value in state_dict.items():
        if key.startswith("vit_model."):
            continue
        if key.startswith("text_transformer."):
            if key.startswith("text_transformer.pooler.") or key.endswith("position_ids"):
                continue  # fusion reads token states: the RoBERTa pooler is unused (built without it)
            converted["text_model." + key[len("text_transformer."):]] = value
            continue
        layer = re.match(r"cross_modal_(text|image)_layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if layer:
            stream, index, name, kind = layer.groups()
            if name not in LAYER_RENAMES:
                raise ValueError(f"Unknown METER fusion weight {key}")
            converted[f"fusion.{stream}_layers.{index}.{LAYER_RENAMES[name]}.{kind}"] = value
            continue
        for old, new in HEAD_RENAMES.items():
            if key.startswith(old):
                converted[new + key[len(old):]] = value
                break
        else:
            raise ValueError(f"Unknown METER weight {key}: not a Swin + RoBERTa METER checkpoint?")
    return converted


def infer_vqa_config(state_dict: dict[str, torch.Tensor], id2label=None, image_size: int = 384) -> FlorenceVQAConfig:
    """The adapter's config from the tensor shapes (heads: width / 64, as in every METER/BERT configuration)."""
    vision = infer_config(strip_prefix(state_dict, "vision_model."), image_size=image_size, drop_path_rate=0.0)
    words = state_dict["text_model.embeddings.word_embeddings.weight"]
    text_width = words.shape[1]
    text_layers = len(contiguous_indices(state_dict, r"text_model\.encoder\.layer\.(\d+)\.", "RoBERTa layer"))
    text_config = {
        "model_type": "roberta", "vocab_size": words.shape[0], "hidden_size": text_width,
        "num_hidden_layers": text_layers, "num_attention_heads": text_width // 64,
        "intermediate_size": state_dict["text_model.encoder.layer.0.intermediate.dense.weight"].shape[0],
        "max_position_embeddings": state_dict["text_model.embeddings.position_embeddings.weight"].shape[0],
        "type_vocab_size": state_dict["text_model.embeddings.token_type_embeddings.weight"].shape[0],
        "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    }
    hidden = state_dict["fusion.text_transform.weight"].shape[0]
    num_labels = state_dict["vqa_head.classifier.weight"].shape[0] if "vqa_head.classifier.weight" in state_dict else 2
    if id2label is not None and len(id2label) != num_labels:
        raise ValueError(f"The answer list has {len(id2label)} answers but the VQA head has {num_labels}")
    return FlorenceVQAConfig(
        vision_config=vision.to_dict(), text_config=text_config, hidden_size=hidden,
        num_fusion_layers=len(contiguous_indices(state_dict, r"fusion\.text_layers\.(\d+)\.", "fusion layer")),
        num_attention_heads=hidden // 64,
        intermediate_size=state_dict["fusion.text_layers.0.fc1.weight"].shape[0],
        num_labels=num_labels, **({"id2label": id2label} if id2label else {}),
    )


# METER's config names (Lightning `hyper_parameters`) and FlorenceVQAConfig's, for the fields checked.
METER_ALIASES = {"num_fusion_layers": ("num_fusion_layers", "num_top_layer"), "hidden_size": ("hidden_size",),
                 "num_labels": ("num_labels", "vqav2_label_size")}
ROBERTA_LAYERS = {"roberta-base": 12, "roberta-large": 24}


def meter_claims(tree, has_vqa_head: bool) -> dict:
    """What METER's config (or a FlorenceVQAConfig dict) states: fusion depth and width, answers, the Swin size its
    `vit` name gives, the RoBERTa depth its `tokenizer` name gives."""
    claim = declared_fields(tree, METER_ALIASES)
    if not has_vqa_head:
        claim.pop("num_labels", None)  # a pretraining checkpoint's config still names the VQA answer count
    claim.update({f"vision {k}": v for k, v in swin_size(str(declared_fields(tree, {"vit": ("vit",)}).get("vit", "")))
                  .items()})
    claim.update(declared_fields(tree, SWIN_ALIASES, ("vision_config",), "vision "))
    tokenizer = str(declared_fields(tree, {"tokenizer": ("tokenizer",)}).get("tokenizer", ""))
    if tokenizer.rsplit("/", 1)[-1] in ROBERTA_LAYERS:
        claim["text num_hidden_layers"] = ROBERTA_LAYERS[tokenizer.rsplit("/", 1)[-1]]
    claim.update(declared_fields(tree, {"num_hidden_layers": ("num_hidden_layers",)}, ("text_config",), "text "))
    return claim


def verify_meter(config, metadata: dict, source: str, expected: dict | None, has_vqa_head: bool,
                 paired_blocks: bool) -> None:
    inferred = {f"vision {k}": v for k, v in swin_architecture(config.vision_config).items()}
    inferred.update({"text num_hidden_layers": config.text_config.num_hidden_layers,
                     **{key: getattr(config, key) for key in METER_ALIASES}})
    claims = [(f"{source}'s metadata", meter_claims(metadata, has_vqa_head)),
              ("--config", meter_claims(expected or {}, has_vqa_head))]
    verify_architecture("METER", inferred, claims,
                        {"vision depths": config.vision_config.depths} if paired_blocks else None)


def convert_meter(checkpoint, id2label: dict[int, str] | None = None, image_size: int = 384,
                  expected: dict | None = None, paired_blocks: bool = True):
    """A `FlorenceForVQA` (VQA checkpoint) or `FlorenceForVisionLanguagePretraining` (pretraining checkpoint) holding
    every weight of a METER Swin + RoBERTa checkpoint; fails naming any weight that does not map, odd Swin depths
    (`paired_blocks`), or an architecture other than the one METER's `hyper_parameters` or `expected` state."""
    raw, metadata = (checkpoint, {}) if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    check_variant(raw)
    state_dict = rename(raw)
    config = infer_vqa_config(state_dict, id2label, image_size)
    has_vqa_head = "vqa_head.classifier.weight" in state_dict
    verify_meter(config, metadata, "the checkpoint" if isinstance(checkpoint, dict) else str(checkpoint), expected,
                 has_vqa_head, paired_blocks)
    model_class = FlorenceForVQA if has_vqa_head else FlorenceForVisionLanguagePretraining
    model = model_class(config)
    expected_keys = set(model.state_dict())
    # A VQA fine-tuned checkpoint also carries its (unused) ITM/MLM heads; keep only what the model holds.
    dropped = sorted(k for k in state_dict if k.startswith(("itm_head.", "mlm_head.")) and k not in expected_keys)
    load_strict(model, {k: v for k, v in state_dict.items() if k not in dropped}, "METER (Swin + RoBERTa)")
    return model.eval(), dropped


def main(argv=None):
    parser = converter_parser(__doc__, FORMATS, "FlorenceForVQA", swin=True)
    parser.add_argument("--answers", help="METER's answer2label.json ({answer: index}) for id2label")
    parser.add_argument("--image-size", type=int, default=384, help="resolution recorded in the config")
    args = parser.parse_args(argv)
    id2label = None
    if args.answers:
        id2label = {int(index): answer for answer, index in json.loads(Path(args.answers).read_text()).items()}
    model, dropped = run_converter(lambda: convert_meter(args.checkpoint, id2label, args.image_size,
                                                         expected_config(args.config), not args.unpaired_blocks))
    write_converted(model, args.output, args.checkpoint)  # exits non-zero when nothing was written
    config = model.config
    print(f"Wrote {args.output}: {type(model).__name__}, Swin {config.vision_config.depths} + RoBERTa "
          f"{config.text_config.num_hidden_layers} layers, fusion {config.num_fusion_layers} x {config.hidden_size}, "
          f"{config.num_labels} labels; left out {len(dropped)} pretraining-head weights")
    return 0


if __name__ == "__main__":
    main()
