"""Convert an original `microsoft/Florence-2-*` remote-code checkpoint to a `FlorenceForConditionalGeneration` folder
with the DaViT tower (Transformers' `Florence2ForConditionalGeneration` layout, which also loads it).

The original layout (`modeling_florence2.py` of the microsoft repos) differs from Transformers' in names only, and in
one transposed tensor:

- DaViT: `vision_tower.convs.{i}.proj` -> `.conv`; in each block `conv{1,2}.fn.dw` -> `conv{1,2}`,
  `window_attn.norm` / `channel_attn.norm` -> `norm1`, `{window,channel}_attn.fn.{qkv,proj}` -> `..._attn.{qkv,proj}`,
  `ffn.norm` -> `norm2`, `ffn.fn.net.fc{1,2}` -> `ffn.fc{1,2}`;
- projector: `image_projection` is an `nn.Parameter` stored `[in, out]`, transposed into the Linear's `[out, in]`;
  `image_pos_embed.*` -> `image_position_embed.*`, `image_proj_norm.*` and `visual_temporal_embed.*` keep their names;
- language model: `language_model.model.*` -> `model.language_model.*`, `language_model.lm_head` -> `lm_head`.

`<image>` is appended to the vocabulary (id = the original vocab size, 51289), and the embeddings are padded to a
multiple of 64 (new rows: the mean embedding), as Transformers' converter does. The DaViT's classification parts that
Florence-2 never runs (`vision_tower.norms`, `vision_tower.head`) and BART's all-zero `final_logits_bias` are dropped;
every other key must be used, and every weight of the model must come from the checkpoint: leftovers and missing keys
are refused, named.

    python conversion/convert_florence2.py --checkpoint Florence-2-base/ --output florence2-base
"""

import json
import math
import re
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conversion.checkpoint_io import (  # noqa: E402
    converter_parser,
    load_state_dict,
    load_strict,
    run_converter,
    write_converted,
)
from modeling_florence.configuration_florence_generation import FlorenceGenerationConfig  # noqa: E402
from modeling_florence.modeling_florence_generation import FlorenceForConditionalGeneration  # noqa: E402

FORMATS = ("auto", "florence2-remote-code")
EMBEDDING_PAD = 64
# (pattern, replacement) applied in order to every original key; a key no rule matches is a leftover.
RENAMES = [
    (r"^vision_tower\.convs\.(\d+)\.proj\.", r"model.vision_tower.convs.\1.conv."),
    (r"^vision_tower\.convs\.(\d+)\.norm\.", r"model.vision_tower.convs.\1.norm."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.conv([12])\.fn\.dw\.",
     r"model.vision_tower.blocks.\1.\2.\3_block.conv\4."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.spatial_block\.window_attn\.norm\.",
     r"model.vision_tower.blocks.\1.\2.spatial_block.norm1."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.channel_block\.channel_attn\.norm\.",
     r"model.vision_tower.blocks.\1.\2.channel_block.norm1."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial_block\.window_attn|channel_block\.channel_attn)\.fn\.(qkv|proj)\.",
     r"model.vision_tower.blocks.\1.\2.\3.\4."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.ffn\.norm\.",
     r"model.vision_tower.blocks.\1.\2.\3_block.norm2."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.ffn\.fn\.net\.(fc[12])\.",
     r"model.vision_tower.blocks.\1.\2.\3_block.ffn.\4."),
    (r"^image_projection$", r"model.multi_modal_projector.image_projection.weight"),
    (r"^image_proj_norm\.", r"model.multi_modal_projector.image_proj_norm."),
    (r"^image_pos_embed\.(row|column)_embeddings\.", r"model.multi_modal_projector.image_position_embed.\1_embeddings."),
    (r"^visual_temporal_embed\.pos_idx_to_embed$", r"model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed"),
    (r"^language_model\.model\.", r"model.language_model."),
    (r"^language_model\.lm_head\.weight$", r"lm_head.weight"),
]
UNUSED = re.compile(r"^vision_tower\.(norms|head)\.")  # DaViT's classifier parts: Florence-2 never runs them
EMBEDDINGS = ("model.language_model.shared.weight", "model.language_model.encoder.embed_tokens.weight",
              "model.language_model.decoder.embed_tokens.weight", "lm_head.weight")


def rename(key: str) -> str | None:
    for pattern, replacement in RENAMES:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return None


def rename_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Transformers' names for every original key (the projection transposed); leftovers refused, named."""
    renamed, leftovers = {}, []
    for key, value in original.items():
        if UNUSED.match(key):
            continue
        if key == "language_model.final_logits_bias":
            if value.abs().max() > 0:
                raise ValueError("language_model.final_logits_bias is not zero: Florence-2's language model has no "
                                 "logits bias to put it in; refusing to convert a different model")
            continue
        new_key = rename(key)
        if new_key is None:
            leftovers.append(key)
            continue
        renamed[new_key] = value.t().contiguous() if key == "image_projection" else value
    if leftovers:
        raise ValueError(f"The checkpoint has keys the Florence-2 layout does not use (leftovers): {sorted(leftovers)}")
    return renamed


def convert_config(original: dict) -> FlorenceGenerationConfig:
    """Our config (DaViT tower) from the original `config.json`: DaViT fields renamed as Transformers' converter
    does, BART fields kept, `<image>` appended to the vocabulary and the vocabulary padded to a multiple of 64."""
    try:
        vision, text = dict(original["vision_config"]), dict(original["text_config"])
        vision_config = dict(
            embed_dim=vision["dim_embed"], num_heads=vision["num_heads"], num_groups=vision["num_groups"],
            depths=vision["depths"], window_size=vision["window_size"], patch_size=vision["patch_size"],
            patch_stride=vision["patch_stride"], patch_padding=vision["patch_padding"],
            patch_prenorm=vision["patch_prenorm"], projection_dim=vision["projection_dim"],
            max_position_embeddings=vision["image_pos_embed"]["max_pos_embeddings"],
            max_temporal_embeddings=vision["visual_temporal_embedding"]["max_temporal_embeddings"], drop_path_rate=0.0,
        )
    except KeyError as error:
        raise ValueError(f"The original config.json lacks {error} (vision_config/text_config of a Florence-2 "
                         "remote-code checkpoint)") from None
    from transformers import BartConfig

    bart_fields = set(BartConfig().to_dict())
    text = {key: value for key, value in text.items() if key in bart_fields and key not in ("model_type", "architectures")}
    image_token_id = text["vocab_size"]
    text["vocab_size"] = math.ceil((image_token_id + 1) / EMBEDDING_PAD) * EMBEDDING_PAD
    return FlorenceGenerationConfig(vision_tower="davit", vision_config=vision_config,
                                    text_config={"model_type": "bart", **text}, image_token_id=image_token_id)


def pad_embeddings(state_dict: dict[str, torch.Tensor], vocab_size: int) -> None:
    """Append rows (the mean embedding) to the tied embeddings up to `vocab_size` (for `<image>` and padding)."""
    for key in EMBEDDINGS:
        if key not in state_dict:
            continue
        weight = state_dict[key]
        if weight.shape[0] > vocab_size:
            raise ValueError(f"{key} has {weight.shape[0]} rows, more than the vocabulary ({vocab_size})")
        extra = weight.mean(dim=0, keepdim=True).expand(vocab_size - weight.shape[0], -1)
        state_dict[key] = torch.cat([weight, extra], dim=0)


def convert(original: dict[str, torch.Tensor], original_config: dict) -> FlorenceForConditionalGeneration:
    """The converted model; refuses leftover keys, missing keys and wrong shapes, naming them."""
    config = convert_config(original_config)
    state_dict = rename_state_dict(original)
    shared = state_dict.get("model.language_model.shared.weight")
    for key in EMBEDDINGS:  # the remote code ties these: any that is absent is the shared table
        if key not in state_dict and shared is not None:
            state_dict[key] = shared
        elif shared is not None and not torch.equal(state_dict[key], shared):
            raise ValueError(f"{key} differs from language_model.model.shared.weight: Florence-2 ties them, so one "
                             "model cannot hold both; refusing to convert a different model")
    pad_embeddings(state_dict, config.text_config.vocab_size)
    model = FlorenceForConditionalGeneration(config)
    load_strict(model, state_dict, "Florence-2 remote-code")
    return model.eval()


def read_original_config(checkpoint: Path, config_path: str | None) -> dict:
    path = Path(config_path) if config_path else checkpoint / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the original Florence-2 config.json is needed (pass --config)")
    return json.loads(path.read_text())


def main(argv=None) -> None:
    parser = converter_parser(__doc__, FORMATS, "FlorenceForConditionalGeneration",
                              config_help="the original config.json (default: the checkpoint folder's)")
    args = parser.parse_args(argv)
    checkpoint = Path(args.checkpoint)

    def run():
        original_config = read_original_config(checkpoint if checkpoint.is_dir() else checkpoint.parent, args.config)
        model = convert(load_state_dict(checkpoint), original_config)
        write_converted(model, args.output, checkpoint)

    run_converter(run)


if __name__ == "__main__":
    main()
