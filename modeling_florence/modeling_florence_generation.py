# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Florence-2 in the family: an image tower + Transformers' Florence-2 projector and BART encoder-decoder.

Built on Transformers' own classes (`transformers.models.florence2`): the language model, the projector, the merging
of image features into the `<image>` placeholders, the loss and `generate()` are Transformers' code. What is ours:

- the image tower is chosen at construction from `config.vision_tower`:
  - `davit`: Transformers' `Florence2VisionBackbone`, at `model.vision_tower` with Transformers' parameter names, so a
    `florence-community/Florence-2-*` folder loads unchanged and a folder saved here loads back into
    `Florence2ForConditionalGeneration`;
  - `coswin`: our CoSwin (`FlorenceVisionModel`), built with `from_florence(folder_or_model)` from a two-tower
    Florence, CoSwin or backbone folder; `vision_feature_stages` adds earlier stages' tokens (LayerNorm + Linear to
    the last width each, then the projector's 2-D position table);
- clear errors for images without pixels and for an unbounded `max_new_tokens`;
- `FlorenceDaViTBackbone`: the DaViT of a Florence-2 folder as an `AutoBackbone` for the other adapters.
"""

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import BackboneOutput
from transformers.models.florence2.modeling_florence2 import (
    Florence2ForConditionalGeneration,
    Florence2Model,
    Florence2MultiModalProjector,
    Florence2PreTrainedModel,
    Florence2Seq2SeqLMOutput,
    Florence2Seq2SeqModelOutput,
    Florence2VisionBackbone,
    Florence2VisionPreTrainedModel,
    shift_tokens_right,
)

from .configuration_florence_generation import FlorenceDaViTConfig, FlorenceGenerationConfig, davit_backbone_config
from .modeling_coswin import FlorenceVisionModel


# ----------------------------------------------------------------------------------------------------------------------
# Projector: Transformers' module, reading its widths from our config; several CoSwin stages concatenated
# ----------------------------------------------------------------------------------------------------------------------
class FlorenceGenerationStageProjection(nn.Module):
    """LayerNorm + Linear of an earlier CoSwin stage's channels to the last stage's width (`vision_feature_stages`)."""

    def __init__(self, channels: int, width: int, eps: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(channels, eps=eps)
        self.dense = nn.Linear(channels, width)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.dense(self.layer_norm(feature_map.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class FlorenceGenerationProjector(Florence2MultiModalProjector):
    """Transformers' `Florence2MultiModalProjector` (2-D learned positions + cosine temporal embedding, a mean token
    before the spatial tokens, Linear + LayerNorm), given one `(B, C, H, W)` map per image-feature stage.

    One map (DaViT, or CoSwin's last stage) is exactly Transformers' forward. Several maps (CoSwin
    `vision_feature_stages`): earlier ones are first projected to the last width, each gets its own 2-D positions,
    and their tokens are concatenated before the temporal embedding and the mean token. With `image_feature_norm`
    (CoSwin) each map is first standardised per channel (`feature_norms`) and the constant temporal embedding is
    left out."""

    def __init__(self, config: FlorenceGenerationConfig):
        super().__init__(SimpleNamespace(vision_config=SimpleNamespace(**config.projector_dims())))
        self.max_grid = config.projector_dims()["max_position_embeddings"]
        self.stage_projections = self.feature_norms = None
        if config.vision_tower != "coswin":
            return
        stages, width = config.image_feature_stages, config.vision_config.hidden_size
        dims = [config.vision_config.stage_dims[stage - 1] for stage in stages[:-1]] + [width]
        if len(stages) > 1:
            eps = config.vision_config.layer_norm_eps
            self.stage_projections = nn.ModuleDict({
                f"stage{stage}": FlorenceGenerationStageProjection(dim, width, eps)
                for stage, dim in zip(stages[:-1], dims)
            })
        if config.image_feature_norm:
            self.feature_norms = nn.ModuleDict({
                f"stage{stage}": nn.BatchNorm2d(dim, affine=False) for stage, dim in zip(stages, dims)
            })

    def forward(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        for feature_map in feature_maps:
            if max(feature_map.shape[-2:]) > self.max_grid:
                raise ValueError(
                    f"The image gives a {feature_map.shape[-2]}x{feature_map.shape[-1]} token grid, larger than the "
                    f"projector's 2-D position table ({self.max_grid} per side, max_position_embeddings): use smaller "
                    "images or a later first stage in vision_feature_stages"
                )
        if self.feature_norms is not None:
            feature_maps = [standardize(norm, fm) for norm, fm in zip(self.feature_norms.values(), feature_maps)]
        elif len(feature_maps) == 1:
            return super().forward(feature_maps[0])
        projections = self.stage_projections.values() if self.stage_projections is not None else []
        maps = [projection(fm) for projection, fm in zip(projections, feature_maps)]
        maps.append(feature_maps[-1])
        tokens = torch.cat([(fm + self.image_position_embed(fm)).flatten(2).transpose(1, 2) for fm in maps], dim=1)
        if self.feature_norms is None:  # Transformers' temporal embedding of frame 0, the same for every token
            tokens = tokens + self.visual_temporal_embed(tokens[:, :1, :]).unsqueeze(1)
        image_features = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return self.image_proj_norm(self.image_projection(image_features))


def standardize(norm: nn.BatchNorm2d, feature_map: torch.Tensor) -> torch.Tensor:
    """`norm(feature_map)`, except that a training batch holding one value per channel (batch 1 on a 1x1 map), which
    has no batch statistics, uses the running ones as evaluation does."""
    single = feature_map.shape[0] * feature_map.shape[2] * feature_map.shape[3] == 1
    if not norm.training or not single:
        return norm(feature_map)
    return F.batch_norm(feature_map, norm.running_mean, norm.running_var, training=False, eps=norm.eps)


def init_unit_scale_projector_(projector: FlorenceGenerationProjector) -> None:
    """A new projector over standardised maps (`image_feature_norm`): earlier stages' Linear layers keep their
    tokens at the unit scale of the last stage's (std 1/sqrt(fan-in), not the language model's 0.02)."""
    with torch.no_grad():
        for projection in (projector.stage_projections or {}).values():
            projection.dense.weight.normal_(0.0, projection.dense.in_features ** -0.5)
            projection.dense.bias.zero_()


# ----------------------------------------------------------------------------------------------------------------------
# Image towers, chosen at construction
# ----------------------------------------------------------------------------------------------------------------------
def check_pixel_values(pixel_values) -> None:
    """Clear errors for images the towers cannot encode (shapes only)."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a tensor (batch, 3, height, width), got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must have shape (batch, channels, height, width), got "
                         f"{tuple(pixel_values.shape)}")
    if pixel_values.numel() == 0:
        raise ValueError(f"pixel_values holds no pixels (shape {tuple(pixel_values.shape)}): pass at least one image "
                         "with a non-zero height and width")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be floating point (normalised pixels from the processor), got "
                         f"{pixel_values.dtype}")


def davit_image_maps(model, pixel_values: torch.Tensor, **kwargs):
    """Transformers' DaViT: its last `(B, C, H, W)` map."""
    outputs = model.vision_tower(pixel_values, **kwargs)
    return outputs, [outputs.last_hidden_state]


def coswin_image_maps(model, pixel_values: torch.Tensor, **kwargs):
    """CoSwin: the maps of `image_feature_stages`; earlier ones from `feature_maps`, the last is the tower's
    `last_hidden_state` (after its final LayerNorm) as a map."""
    outputs = model.vision_tower(pixel_values=pixel_values, return_dict=True)
    stages = model.config.image_feature_stages
    last = outputs.feature_maps[-1]
    final = outputs.last_hidden_state.transpose(1, 2).unflatten(2, last.shape[-2:])
    return outputs, [outputs.feature_maps[stage - 1] for stage in stages[:-1]] + [final]


TOWERS = {
    "davit": (lambda config: Florence2VisionBackbone._from_config(config.vision_config), davit_image_maps),
    "coswin": (lambda config: FlorenceVisionModel._from_config(config.vision_config), coswin_image_maps),
}


def load_coswin(source) -> FlorenceVisionModel:
    """The CoSwin tower of a model (CoSwin, two-tower Florence, backbone or any adapter holding `vision_model`) or of
    a folder (CoSwin, two-tower or backbone: `FlorenceVisionModel.from_pretrained` reads each)."""
    if isinstance(source, (str, Path)):
        if not Path(source).is_dir():
            raise ValueError(f"from_florence needs a local Florence, CoSwin or backbone folder; {source} is not one")
        return FlorenceVisionModel.from_pretrained(source)
    if isinstance(source, FlorenceVisionModel):
        return source
    tower = getattr(source, "vision_model", None)
    if isinstance(tower, FlorenceVisionModel):
        return tower
    raise ValueError(f"from_florence needs a Florence two-tower model, a CoSwin model or backbone (or a folder of "
                     f"one), got {type(source).__name__}")


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------
class FlorenceGenerationPreTrainedModel(Florence2PreTrainedModel):
    config: FlorenceGenerationConfig
    config_class = FlorenceGenerationConfig
    base_model_prefix = "model"
    _no_split_modules = ["Florence2VisionBlock", "FlorenceVisionLayer", "BartEncoderLayer", "BartDecoderLayer"]

    @classmethod
    def from_florence(cls, florence_model_or_folder, text_config=None, **config_kwargs):
        """This model on the CoSwin tower of a pretrained Florence (a two-tower `FlorenceModel`, a CoSwin model or
        backbone, or a folder of any of them): the tower is copied exactly, the projector and the language model
        start from their init. `text_config` (dict or config) sizes the language model (default: `BartConfig()`'s);
        `config_kwargs` set `image_token_id`, `vision_feature_stages`, `max_position_embeddings`, ..."""
        tower = load_coswin(florence_model_or_folder)
        config_kwargs.setdefault("image_feature_norm", True)
        config = FlorenceGenerationConfig(
            vision_tower="coswin", vision_config=tower.config.to_dict(), text_config=text_config, **config_kwargs
        )
        model = cls(config)
        base = model if isinstance(model, FlorenceGenerationModel) else model.model
        base.vision_tower.load_state_dict(tower.state_dict())
        if config.image_feature_norm:
            init_unit_scale_projector_(base.multi_modal_projector)
        return model


class FlorenceGenerationModel(FlorenceGenerationPreTrainedModel, Florence2Model):
    """Transformers' `Florence2Model` (image features into the `<image>` placeholders, BART encoder-decoder) with the
    image tower of `config.vision_tower`."""

    def __init__(self, config: FlorenceGenerationConfig):
        Florence2PreTrainedModel.__init__(self, config)
        build_tower, self._image_maps = TOWERS[config.vision_tower]
        self.vision_tower = build_tower(config)
        self.multi_modal_projector = FlorenceGenerationProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs):
        """The tower's output, with `pooler_output` = the projected image tokens `(B, 1 + L, d_model)`."""
        check_pixel_values(pixel_values)
        kwargs.pop("return_dict", None)
        outputs, maps = self._image_maps(self, pixel_values, **kwargs)
        outputs.pooler_output = self.multi_modal_projector(maps)
        return outputs

    @torch.no_grad()
    def num_image_tokens(self, height: int, width: int) -> int:
        """How many `<image>` placeholders an image of `height x width` pixels takes (the processor's
        `image_seq_length`)."""
        probe = torch.zeros(1, 3, height, width, dtype=self.dtype, device=self.device)
        _, maps = self._image_maps(self, probe)
        return 1 + sum(fm.shape[-2] * fm.shape[-1] for fm in maps)


class FlorenceForConditionalGeneration(FlorenceGenerationPreTrainedModel, Florence2ForConditionalGeneration):
    """Transformers' `Florence2ForConditionalGeneration` (tied LM head, loss on `labels`, `generate()`) on
    [`FlorenceGenerationModel`]. `generate` refuses an unbounded `max_new_tokens`."""

    def __init__(self, config: FlorenceGenerationConfig):
        Florence2PreTrainedModel.__init__(self, config)
        self.model = FlorenceGenerationModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def num_image_tokens(self, height: int, width: int) -> int:
        return self.model.num_image_tokens(height, width)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None, encoder_outputs=None, past_key_values=None, inputs_embeds=None,
                decoder_inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        """Transformers' forward; in training mode with `labels`, the LM head scores only the labelled positions
        (the same loss, without the logits of padding: most of a multi-task batch's label positions are padding,
        and the head over the whole vocabulary is most of a small model's step), and `logits` is None."""
        inputs = dict(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                      decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                      encoder_outputs=encoder_outputs, past_key_values=past_key_values, inputs_embeds=inputs_embeds,
                      decoder_inputs_embeds=decoder_inputs_embeds)
        if labels is None or not self.training or encoder_outputs is not None:
            return super().forward(**inputs, labels=labels, use_cache=use_cache, logits_to_keep=logits_to_keep,
                                   **kwargs)
        text = self.config.text_config
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            inputs["decoder_input_ids"] = shift_tokens_right(labels, text.pad_token_id, text.decoder_start_token_id)
        outputs = self.model(**inputs, use_cache=False, **kwargs)
        labelled = labels != -100
        kept = labels[labelled][None]
        logits = self.lm_head(outputs.last_hidden_state[labelled])[None]
        loss = self.loss_function(logits=logits, labels=kept, vocab_size=text.vocab_size, shift_labels=kept, **kwargs)
        return Florence2Seq2SeqLMOutput(
            loss=loss, logits=None, decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions, cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states, encoder_attentions=outputs.encoder_attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

    def max_decoder_length(self) -> int:
        """Longest sequence the decoder can write (its learned position table)."""
        return int(getattr(self.config.text_config, "max_position_embeddings", 1024))

    def check_generation_length(self, kwargs: dict) -> None:
        limit = self.max_decoder_length()
        generation_config = kwargs.get("generation_config")
        for name in ("max_new_tokens", "max_length"):
            value = kwargs.get(name, getattr(generation_config, name, None))
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            if value > limit:
                raise ValueError(f"{name}={value} exceeds what the decoder can write ({limit} positions, "
                                 f"text_config.max_position_embeddings): pass {name} <= {limit}")

    def generate(self, *args, **kwargs):
        self.check_generation_length(kwargs)
        return super().generate(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# DaViT as a backbone for the other Florence adapters
# ----------------------------------------------------------------------------------------------------------------------
# Epsilon of the LayerNorms the adapters put on DaViT maps (the official DaViT detection code's `norm{i}`: PyTorch's).
DAVIT_LAYER_NORM_EPS = 1e-5
# Config types of a folder whose DaViT `FlorenceDaViTBackbone.from_pretrained` reads.
DAVIT_FOLDER_TYPES = ("florence2", "florence_generation", "florence_davit")
# Adapters holding a DaViT at `vision_model` (`FlorenceDaViTBackbone.from_pretrained` reads their folders too).
ADAPTER_TYPES = ("florence_detection", "florence_vqa")
class FlorenceDaViTBackbone(BackboneMixin, Florence2VisionPreTrainedModel):
    """The DaViT of a Florence-2 folder as a Transformers backbone: `(B, C, H, W)` maps of `out_features`.

    The tower is Transformers' `Florence2VisionBackbone` at `vision_tower`; a map is exactly the hidden state that
    tower records after the last block of its stage (`stem` is the first convolutional embedding). `from_pretrained`
    reads a backbone folder, a generation folder with the DaViT tower, or a Transformers `florence2` folder
    (`florence-community/Florence-2-*`): the tower's weights, nothing else."""

    config: FlorenceDaViTConfig
    config_class = FlorenceDaViTConfig
    base_model_prefix = "model"
    has_attentions = False
    supports_gradient_checkpointing = True  # per DaViT block, in `forward`
    # The rest of a generation, detector or VQA folder, which the backbone leaves behind without a warning.
    _keys_to_ignore_on_load_unexpected = [
        r"^(model\.)?(language_model|multi_modal_projector)\.", r"^lm_head\.",
        r"^(hidden_states_norms|fpn|dyhead|head|text_model|text_projection|fusion|vqa_head|itm_head|mlm_head)\.",
        r"^class_embeddings$",
    ]

    def __init__(self, config: FlorenceDaViTConfig):
        super().__init__(config)
        self.vision_tower = Florence2VisionBackbone._from_config(config)
        self.num_features = [config.embed_dim[0]] + list(config.embed_dim)
        self.gradient_checkpointing = False
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Also from a generation (or Transformers `florence2`) folder, or a detector or VQA folder on a DaViT tower
        (at `vision_model` there): its `vision_config`, with the `out_features` / `out_indices` asked for."""
        backbone_kwargs = {key: kwargs.pop(key) for key in ("out_features", "out_indices") if key in kwargs}
        if config is None:
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path)
        if getattr(config, "vision_tower", "davit") != "davit":
            raise ValueError(f"{pretrained_model_name_or_path} holds a {config.vision_tower} tower, not DaViT: load it "
                             "with FlorenceVisionBackbone")
        vision = getattr(config, "vision_config", config).to_dict()
        if vision.get("model_type") == FlorenceDaViTConfig.model_type and not backbone_kwargs:
            backbone_kwargs = {"out_features": vision.get("out_features")}  # a backbone folder keeps its stages
        for key in ("model_type", "out_features", "out_indices", "stage_names"):
            vision.pop(key, None)
        # Rebuilt without isinstance checks: remote code loads the config class from another module object.
        if config.model_type in ADAPTER_TYPES:
            kwargs.setdefault("key_mapping", {r"^vision_model\.": ""})
        config = FlorenceDaViTConfig(**vision, **backbone_kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_tower.convs[0].conv

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                output_attentions: bool | None = None, return_dict: bool | None = None, **kwargs):
        check_pixel_values(pixel_values)
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        tower = self.vision_tower
        hidden_states = pixel_values.to(tower.convs[0].conv.weight.dtype)
        maps = []
        for index, (conv, blocks) in enumerate(zip(tower.convs, tower.blocks)):
            hidden_states = conv(hidden_states)
            if index == 0:
                maps.append(hidden_states)
            for block in blocks:
                if self.gradient_checkpointing and self.training:
                    hidden_states = self._gradient_checkpointing_func(block, hidden_states)
                else:
                    hidden_states = block(hidden_states)
            maps.append(hidden_states)
        by_name = dict(zip(self.stage_names, maps))
        output = BackboneOutput(
            feature_maps=tuple(by_name[name] for name in self.out_features),
            hidden_states=tuple(m.flatten(2).transpose(1, 2) for m in maps) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


def load_davit(source) -> "FlorenceDaViTBackbone | None":
    """The DaViT of a Florence-2 source as a [`FlorenceDaViTBackbone`] (weights exactly the source's), or None when
    the source holds no DaViT (a two-tower or CoSwin Florence, which the callers load their own way).

    `source`: a `FlorenceDaViTBackbone`, a model holding Transformers' `Florence2VisionBackbone` at `vision_tower` or
    `model.vision_tower` (ours or Transformers' `Florence2ForConditionalGeneration` / `Florence2Model`), or the folder
    or Hub name of one (`florence2`, `florence_generation` with the DaViT tower, `florence_davit`)."""
    if isinstance(source, FlorenceDaViTBackbone):
        return source
    if isinstance(source, nn.Module):
        tower = getattr(source, "vision_tower", None)
        if tower is None and isinstance(getattr(source, "model", None), nn.Module):
            tower = getattr(source.model, "vision_tower", None)
        if not isinstance(tower, Florence2VisionBackbone):
            return None
        backbone = FlorenceDaViTBackbone(davit_backbone_config(tower.config))
        backbone.vision_tower.load_state_dict(tower.state_dict())
        return backbone.to(next(tower.parameters()).dtype)
    if not isinstance(source, (str, Path)):
        return None
    config = AutoConfig.from_pretrained(source)
    if config.model_type not in DAVIT_FOLDER_TYPES or getattr(config, "vision_tower", "davit") != "davit":
        return None
    return FlorenceDaViTBackbone.from_pretrained(source)


def load_two_tower(source, role: str = ""):
    """A two-tower `FlorenceModel` given as a model or as a folder / Hub name (loaded), checked to hold both towers
    and the text projection; `role` names it in the error (e.g. " as text_source")."""
    from .modeling_florence import FlorenceModel

    model = source if isinstance(source, nn.Module) else FlorenceModel.from_pretrained(source)
    if not all(hasattr(model, name) for name in ("vision_model", "text_model", "text_projection")):
        raise ValueError(f"from_florence needs a two-tower FlorenceModel (or its folder){role}, got "
                         f"{type(model).__name__}")
    return model


def load_tower_sources(source, text_source=None) -> tuple:
    """What an adapter's `from_florence` copies from its sources: `(image tower, its config, text source)`.

    The image tower is the DaViT of a Florence-2 `source` (see [`load_davit`]) or else the CoSwin of a two-tower
    `source`; the text source is `text_source` (a two-tower `FlorenceModel` or folder) when given, else the
    two-tower `source` itself, else None (a Florence-2 source holds no contrastive or fusion text tower)."""
    davit = load_davit(source)
    florence = load_two_tower(source) if davit is None else None
    text = load_two_tower(text_source, " as text_source") if text_source is not None else florence
    if davit is not None:
        return davit, davit.config, text
    return florence.vision_model, florence.config.vision_config, text


__all__ = [
    "FlorenceDaViTBackbone",
    "FlorenceForConditionalGeneration",
    "FlorenceGenerationModel",
    "FlorenceGenerationPreTrainedModel",
    "Florence2Seq2SeqLMOutput",
    "Florence2Seq2SeqModelOutput",
]
