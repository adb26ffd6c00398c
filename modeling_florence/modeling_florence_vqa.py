# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Florence's METER adapter: co-attention fusion of the image and text towers, a VQA head and fusion pretraining.

The architecture is METER's (Dou et al., 2022) as Florence used it:

1. the image tower gives `(B, L, C)` tokens; an image "CLS" token (their average) is put in front. The tower is
   chosen at construction by the vision config's `model_type`: CoSwin (its `last_hidden_state`, after its final
   LayerNorm) or the DaViT of Florence-2 (`FlorenceDaViTBackbone`: the flattened maps of `vision_feature_stages`,
   exactly Transformers' `Florence2VisionBackbone` hidden states; the fusion puts a LayerNorm on the last stage, which
   DaViT leaves unnormalised). `from_florence` takes the DaViT of a Florence-2 folder;
   the text encoder (Florence's tower, bidirectional, or e.g. RoBERTa) gives `(B, T, D)` tokens;
2. each stream is linearly projected to the fusion width and gets a token-type embedding (text 0, image 1);
3. N co-attention layers per stream, both updated from the previous layer's two outputs: self-attention ->
   cross-attention to the other stream -> FFN, each a post-LN residual block (BERT's layer with cross-attention);
4. a tanh pooler on token 0 of each stream; the two are concatenated (`2 * hidden_size`).

Heads: VQA (Linear -> LayerNorm -> GELU -> Linear over the answers, BCE on soft scores times the number of answers),
ITM (Linear to 2 classes, with negatives sampled from the in-batch similarities) and MLM (BERT's transform + decoder).

The towers sit at `vision_model` and `text_model`, as in `FlorenceModel`, so each tower class loads from a VQA
folder and every model here loads the fusion weights of the others' folders (heads are task-specific).
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.utils import ModelOutput

from .configuration_florence_vqa import FlorenceVQAConfig
from .modeling_coswin import (
    FlorencePreTrainedBase,
    FlorenceVisionModel,
    init_linear_or_layer_norm,
    resolve_output_flags,
)
from .modeling_florence import FlorenceAttention, FlorenceTextModel, nested_to_tuple
from .modeling_florence_generation import DAVIT_LAYER_NORM_EPS, FlorenceDaViTBackbone, load_tower_sources

# Temperature of the in-batch image-text similarities from which hard ITM negatives are drawn (ALBEF's 0.07).
HARD_NEGATIVE_TEMPERATURE = 0.07
TEXT_TOKEN_TYPE, IMAGE_TOKEN_TYPE = 0, 1


@dataclass
class FlorenceFusionModelOutput(ModelOutput):
    """
    Output of [`FlorenceFusionModel`].

    Args:
        pooler_output: `(B, 2 * hidden_size)` the text and image poolers, concatenated (METER's `cls_feats`).
        text_fusion_output: the text stream after fusion: `last_hidden_state (B, T, H)`, `pooler_output (B, H)`, and
            with the flags, `hidden_states` (fusion input + every layer), `attentions` (self) and `cross_attentions`.
        image_fusion_output: the same for the image stream (`(B, 1 + L, H)`, token 0 = the average image token).
        text_model_output, vision_model_output: the towers' outputs.
    """

    pooler_output: torch.FloatTensor | None = None
    text_fusion_output: BaseModelOutputWithPoolingAndCrossAttentions | None = None
    image_fusion_output: BaseModelOutputWithPoolingAndCrossAttentions | None = None
    text_model_output: ModelOutput | None = None
    vision_model_output: ModelOutput | None = None

    def to_tuple(self) -> tuple[Any]:
        return nested_to_tuple(self)


@dataclass
class FlorenceVQAHeadOutput(ModelOutput):
    """The fields a VQA head puts in front of the fusion's: its loss and answer logits (see [`FlorenceVQAOutput`])."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


@dataclass
class FlorenceVQAOutput(FlorenceFusionModelOutput, FlorenceVQAHeadOutput):
    """
    Output of [`FlorenceForVQA`]: the head's fields, then those of [`FlorenceFusionModelOutput`] (a dataclass takes
    its bases' fields in reverse order, so the head's come first).

    Args:
        loss: BCE-with-logits against the soft VQA scores, times the number of answers (METER), when `labels` given.
        logits: `(B, num_labels)` answer scores (apply a sigmoid for probabilities).
        pooler_output, text_fusion_output, image_fusion_output, text_model_output, vision_model_output: as
            [`FlorenceFusionModelOutput`].
    """


@dataclass
class FlorencePretrainingHeadOutput(ModelOutput):
    """The fields the pretraining heads put in front of the fusion's (see [`FlorenceVisionLanguagePretrainingOutput`])."""

    loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None


@dataclass
class FlorenceVisionLanguagePretrainingOutput(FlorenceFusionModelOutput, FlorencePretrainingHeadOutput):
    """
    Output of [`FlorenceForVisionLanguagePretraining`]: the heads' fields, then those of
    [`FlorenceFusionModelOutput`].

    Args:
        loss: `itm_loss + mlm_loss` (those computed).
        itm_loss: cross-entropy of the ITM head over the positives and the sampled negatives (or `itm_labels`).
        mlm_loss: cross-entropy of the MLM head at the positions `mlm_labels` marks (-100 elsewhere).
        itm_logits: `(B, 2)` (no match, match) logits of the given image-text pairs.
        mlm_logits: `(B, T, vocab_size)` token logits of the given (masked) texts.
        pooler_output, text_fusion_output, image_fusion_output, text_model_output, vision_model_output: as
            [`FlorenceFusionModelOutput`], for the given pairs.
    """


# ----------------------------------------------------------------------------------------------------------------------
# Co-attention layers
# ----------------------------------------------------------------------------------------------------------------------
def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """`(B, L)` 1 = attend / 0 = padding -> `(B, 1, 1, L)` additive mask for keys, or None."""
    if mask is None:
        return None
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class FlorenceFusionAttention(FlorenceAttention):
    """Multi-head attention of one stream's queries over a context (the stream itself, or the other stream): the
    text tower's attention module, bidirectional, with the fusion dropout."""

    def __init__(self, config: FlorenceVQAConfig):
        super().__init__(config, config.attention_probs_dropout_prob, is_causal=False)

    def forward(
        self, hidden_states: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.attend(hidden_states, context, context_mask, **kwargs)


class FlorenceFusionLayer(GradientCheckpointingLayer):
    """One co-attention layer of one stream (BERT's layer with cross-attention, as METER's `BertCrossLayer`):
    `x = LN(x + SelfAttn(x))`, `x = LN(x + CrossAttn(x, other))`, `x = LN(x + FFN(x))`."""

    def __init__(self, config: FlorenceVQAConfig):
        super().__init__()
        self.self_attn = FlorenceFusionAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attn = FlorenceFusionAttention(config)
        self.cross_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        other_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        other_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """`attention_mask` / `other_mask`: additive `(B, 1, 1, L)` masks of this stream's and the other's keys."""
        attn_output, self_weights = self.self_attn(hidden_states, hidden_states, attention_mask, **kwargs)
        hidden_states = self.self_attn_layer_norm(hidden_states + self.dropout(attn_output))
        attn_output, cross_weights = self.cross_attn(hidden_states, other_states, other_mask, **kwargs)
        hidden_states = self.cross_attn_layer_norm(hidden_states + self.dropout(attn_output))
        ffn_output = self.fc2(self.activation_fn(self.fc1(hidden_states)))
        hidden_states = self.final_layer_norm(hidden_states + self.dropout(ffn_output))
        return hidden_states, self_weights, cross_weights


class FlorenceFusionPooler(nn.Module):
    """tanh(Linear(token 0)), BERT's pooler."""

    def __init__(self, config: FlorenceVQAConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


def sincos_position_embeddings(height: int, width: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """`(height * width, dim)` fixed 2D sine-cosine embeddings of the token centres of a `height x width` grid on the
    unit square (row-major): sin/cos of x then of y, `dim / 4` frequencies each, geometric from 8 pi (a period of a
    quarter of the image) down to 8 pi / 100. Resolution-independent: a token keeps its embedding at any grid size."""
    frequencies = 8 * math.pi * 100.0 ** (-torch.arange(dim // 4, device=device, dtype=torch.float64) / (dim // 4))
    ys = (torch.arange(height, device=device, dtype=torch.float64) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float64) + 0.5) / width
    y, x = (grid.reshape(-1, 1) * frequencies for grid in torch.meshgrid(ys, xs, indexing="ij"))
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).to(dtype or torch.get_default_dtype())


class FlorenceFusionStageProjection(nn.Module):
    """LayerNorm + Linear of an earlier stage's tokens to the fusion width (`vision_feature_stages`)."""

    def __init__(self, channels: int, config: FlorenceVQAConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(channels, eps=getattr(config.vision_config, "layer_norm_eps",
                                                             DAVIT_LAYER_NORM_EPS))
        self.dense = nn.Linear(channels, config.hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dense(self.layer_norm(tokens))


class FlorenceFusionEncoder(nn.Module):
    """Projections to the fusion width, token types, the two stacks of co-attention layers, and the poolers."""

    def __init__(self, config: FlorenceVQAConfig):
        super().__init__()
        self.config = config
        self.text_transform = nn.Linear(config.text_config.hidden_size, config.hidden_size)
        stage_dims = config.vision_config.stage_dims
        davit = config.vision_tower == "davit"
        width = stage_dims[-1] if davit else config.vision_config.hidden_size
        self.image_transform = nn.Linear(width, config.hidden_size)
        # CoSwin's last stage is its `last_hidden_state` (after a final LayerNorm); DaViT's has none: one is added.
        self.image_layer_norm = nn.LayerNorm(width, eps=DAVIT_LAYER_NORM_EPS) if davit else None
        self.image_stage_transforms = nn.ModuleDict({
            f"stage{stage}": FlorenceFusionStageProjection(stage_dims[stage - 1], config)
            for stage in config.vision_feature_stages[:-1]
        })
        self.token_type_embeddings = nn.Embedding(2, config.hidden_size)
        self.text_layers = nn.ModuleList(FlorenceFusionLayer(config) for _ in range(config.num_fusion_layers))
        self.image_layers = nn.ModuleList(FlorenceFusionLayer(config) for _ in range(config.num_fusion_layers))
        self.text_pooler = FlorenceFusionPooler(config)
        self.image_pooler = FlorenceFusionPooler(config)

    def embed_text(self, text_tokens: torch.Tensor) -> torch.Tensor:
        return self.text_transform(text_tokens) + self.token_type_embeddings.weight[TEXT_TOKEN_TYPE]

    def project_image(self, stage_tokens, grids=None) -> torch.Tensor:
        """The image tokens at the fusion width `(B, L, H)`, before the token type: each stage of
        `config.vision_feature_stages` projected (`stage_tokens`: their `(B, L_i, C_i)` tokens, the last being the
        tower's `last_hidden_state`), concatenated, plus the 2D position embeddings of their `(H_i, W_i)` `grids`
        when `image_position_embeddings`."""
        stages = self.config.vision_feature_stages
        stage_tokens = list(stage_tokens)
        if self.image_layer_norm is not None:
            stage_tokens[-1] = self.image_layer_norm(stage_tokens[-1])
        projections = [self.image_stage_transforms[f"stage{stage}"] for stage in stages[:-1]] + [self.image_transform]
        projected = [projection(tokens) for projection, tokens in zip(projections, stage_tokens)]
        if self.config.image_position_embeddings:
            projected = [
                tokens + sincos_position_embeddings(*grid, self.config.hidden_size, tokens.device, tokens.dtype)
                for tokens, grid in zip(projected, grids)
            ]
        return torch.cat(projected, dim=1)

    def embed_image(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Projected image tokens (`project_image`) -> the image stream's input: plus the image token type."""
        return image_tokens + self.token_type_embeddings.weight[IMAGE_TOKEN_TYPE]

    def forward(
        self,
        text_embeds: torch.Tensor,
        image_embeds: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[BaseModelOutputWithPoolingAndCrossAttentions, BaseModelOutputWithPoolingAndCrossAttentions]:
        """Fuse projected streams (`embed_text` / `embed_image` outputs) under their `(B, L)` 0/1 padding masks."""
        text_additive = additive_mask(text_mask, text_embeds.dtype)
        image_additive = additive_mask(image_mask, image_embeds.dtype)
        text, image = text_embeds, image_embeds
        text_states = (text,) if output_hidden_states else None
        image_states = (image,) if output_hidden_states else None
        attentions = {"text_self": (), "text_cross": (), "image_self": (), "image_cross": ()}
        for text_layer, image_layer in zip(self.text_layers, self.image_layers):
            # Both streams read the other's output of the previous layer (METER's simultaneous update).
            new_text, text_self, text_cross = text_layer(text, image, text_additive, image_additive, **kwargs)
            new_image, image_self, image_cross = image_layer(image, text, image_additive, text_additive, **kwargs)
            text, image = new_text, new_image
            if output_hidden_states:
                text_states += (text,)
                image_states += (image,)
            if output_attentions:
                for name, weights in zip(attentions, (text_self, text_cross, image_self, image_cross)):
                    attentions[name] += (weights,)
        if not output_attentions:
            attentions = dict.fromkeys(attentions)
        text_output = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=text,
            pooler_output=self.text_pooler(text),
            hidden_states=text_states,
            attentions=attentions["text_self"],
            cross_attentions=attentions["text_cross"],
        )
        image_output = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=image,
            pooler_output=self.image_pooler(image),
            hidden_states=image_states,
            attentions=attentions["image_self"],
            cross_attentions=attentions["image_cross"],
        )
        return text_output, image_output


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------
def build_text_model(text_config) -> PreTrainedModel:
    """The text encoder a config names: Florence's tower (bidirectional per the config) or any Transformers encoder
    (built without its pooler: fusion reads the token states)."""
    if text_config.model_type == "florence_text":
        return FlorenceTextModel._from_config(text_config)
    try:
        return AutoModel.from_config(text_config, add_pooling_layer=False)
    except TypeError:  # encoders without a pooler option
        return AutoModel.from_config(text_config)


class FlorenceFusionPreTrainedModel(FlorencePreTrainedBase):
    config_class = FlorenceVQAConfig
    # The other fusion models' heads, left behind without a warning when one loads another's folder.
    _keys_to_ignore_on_load_unexpected = [r"^vqa_head\.", r"^itm_head\.", r"^mlm_head\."]
    # No model here holds another under a prefix: the towers and `fusion` sit at the top of every fusion model, so
    # the models load each other's folders key for key.
    base_model_prefix = "florence_fusion"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _no_split_modules = ["FlorenceFusionLayer", "FlorenceTextLayer", "FlorenceVisionLayer", "Florence2VisionBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        """BERT's init for the fusion layers and heads (normal(initializer_range), zero biases, LayerNorms at
        identity); the towers keep their own init (Transformers dispatches to each sub-model's `_init_weights`)."""
        init_linear_or_layer_norm(module, self.config.initializer_range)

    def _build_fusion(self, config: FlorenceVQAConfig) -> None:
        """The towers (built with `_from_config`, so `attn_implementation` reaches them) and the fusion encoder. The
        image tower follows `config.vision_tower`: CoSwin, or DaViT as a backbone returning `vision_feature_stages`."""
        if config.vision_tower == "davit":
            self.vision_model = FlorenceDaViTBackbone._from_config(config.vision_config)
        else:
            config.vision_config.check_head_widths()
            self.vision_model = FlorenceVisionModel._from_config(config.vision_config)
        self.text_model = build_text_model(config.text_config)
        self.fusion = FlorenceFusionEncoder(config)

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def stage_tokens(self, vision_outputs) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """The `(B, L_i, C_i)` tokens and `(H_i, W_i)` grids of `config.vision_feature_stages` from an image tower
        output. CoSwin: earlier stages from its `feature_maps`, the last stage is its `last_hidden_state` (final
        LayerNorm). DaViT: the backbone's `feature_maps` are exactly those stages, all flattened."""
        stages = self.config.vision_feature_stages
        if self.config.vision_tower == "davit":
            maps = list(vision_outputs.feature_maps)
            last = maps[-1].flatten(2).transpose(1, 2)
        else:
            maps = [vision_outputs.feature_maps[stage - 1] for stage in stages]
            last = vision_outputs.last_hidden_state
        tokens = [feature_map.flatten(2).transpose(1, 2) for feature_map in maps[:-1]]
        return tokens + [last], [tuple(feature_map.shape[-2:]) for feature_map in maps]

    @torch.no_grad()
    def get_image_hidden_states(self, pixel_values: torch.Tensor):
        """What `image_hidden_states` takes, computed from images (e.g. once, for a frozen image tower): the tower's
        `last_hidden_state` `(B, L, C)`, or with several `vision_feature_stages` a tuple of their tokens; with
        `image_position_embeddings` each as a channels-last `(B, H_i, W_i, C_i)` map, so the grid travels along."""
        tokens, grids = self.stage_tokens(self.vision_model(pixel_values=pixel_values, return_dict=True))
        if self.config.image_position_embeddings:
            tokens = [stage.unflatten(1, grid) for stage, grid in zip(tokens, grids)]
        return tokens[0] if len(tokens) == 1 else tuple(tokens)

    def check_image_hidden_states(self, image_hidden_states, batch_size: int):
        """Validate precomputed image features (see `get_image_hidden_states`): one `(B, L_i, C_i)` tokens or
        `(B, H_i, W_i, C_i)` map per stage. Returns the stage tokens (in the fusion's dtype) and their grids (a
        map's own; tokens are taken as a square grid, which position embeddings require then)."""
        stages = self.config.vision_feature_stages
        if isinstance(image_hidden_states, torch.Tensor):
            image_hidden_states = [image_hidden_states]
        hidden_states = list(image_hidden_states)
        widths = [self.config.vision_config.stage_dims[stage - 1] for stage in stages]
        if len(hidden_states) != len(stages) or any(
            not isinstance(h, torch.Tensor) or h.ndim not in (3, 4) or h.shape[-1] != width
            for h, width in zip(hidden_states, widths)
        ):
            shapes = [tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__ for h in hidden_states]
            expected = ", ".join(f"(batch, tokens, {width})" for width in widths)
            raise ValueError(
                f"image_hidden_states must be the image tower's tokens of stages {stages} (`get_image_hidden_states`): "
                f"{expected} (or channels-last maps); got {shapes[0] if len(shapes) == 1 else shapes}"
            )
        if any(h.shape[0] != batch_size for h in hidden_states):
            raise ValueError(f"Got image features of {hidden_states[0].shape[0]} images but {batch_size} questions: "
                             "pass one image per question")
        grids = []
        for h in hidden_states:
            side = math.isqrt(h.shape[1])
            grids.append(tuple(h.shape[1:3]) if h.ndim == 4 else (side, side) if side * side == h.shape[1] else None)
        if self.config.image_position_embeddings and None in grids:
            raise ValueError("image_position_embeddings need each token's place: pass image_hidden_states of a "
                             "non-square grid as (batch, height, width, channels) maps (`get_image_hidden_states`)")
        dtype = self.fusion.image_transform.weight.dtype
        return [h.flatten(1, -2).to(dtype) for h in hidden_states], grids

    @classmethod
    def from_florence(cls, florence_model_or_folder, text_source=None, **config_kwargs):
        """This model on the towers of a pretrained Florence (an instance, a folder or a Hub name); the towers are
        copied exactly, the fusion layers and heads start from their init:

        - a two-tower `FlorenceModel`: its CoSwin and its text tower;
        - a Florence-2 model or folder (ours with the DaViT tower, Transformers' `florence2` such as
          `florence-community/Florence-2-base`, or a `FlorenceDaViTBackbone`): its DaViT. Florence-2 has no text
          encoder of its own to fuse (its BART serves the decoder), so the text tower comes from `text_source` (a
          two-tower `FlorenceModel` or folder: its text tower, copied) or else from `text_config` in `config_kwargs`
          (any encoder config; default `FlorenceTextConfig()`), with the weights of its init.

        `text_source` also replaces a two-tower source's text tower. `config_kwargs` set the fusion fields
        (`hidden_size`, `num_fusion_layers`, `num_attention_heads`, `vision_feature_stages`, `id2label` /
        `label2id` for the answers, ...). The Florence text tower is rebuilt bidirectional for fusion."""

        vision_tower, vision_config, text = load_tower_sources(florence_model_or_folder, text_source)
        if text is not None:
            config_kwargs.setdefault("text_config", text.config.text_config.to_dict())
        config = FlorenceVQAConfig(vision_config=vision_config.to_dict(), **config_kwargs)
        model = cls(config)
        model.vision_model.load_state_dict(vision_tower.state_dict())
        if text is not None:
            model.text_model.load_state_dict(text.text_model.state_dict())
        return model

    def encode(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_attention_mask: torch.Tensor | None,
        output_hidden_states: bool,
        output_attentions: bool,
        image_hidden_states: torch.Tensor | None = None,
    ) -> dict:
        """Run both towers (the image tower only without `image_hidden_states`); return their outputs and the
        projected streams with their 0/1 masks."""
        check_pair_inputs(pixel_values, input_ids, attention_mask, image_hidden_states)
        if image_hidden_states is None:
            vision_outputs = self.vision_model(
                pixel_values=pixel_values,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
                return_dict=True,
            )
            stage_tokens, grids = self.stage_tokens(vision_outputs)
        else:
            vision_outputs = None
            stage_tokens, grids = self.check_image_hidden_states(image_hidden_states, input_ids.shape[0])
        text_outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        image_tokens = self.fusion.project_image(stage_tokens, grids)
        image_mask = None
        if image_attention_mask is not None:
            if image_attention_mask.shape != image_tokens.shape[:2]:
                raise ValueError(
                    f"image_attention_mask must have shape {tuple(image_tokens.shape[:2])} (batch, image tokens), got "
                    f"{tuple(image_attention_mask.shape)}"
                )
            weights = image_attention_mask.to(image_tokens.dtype)
            average = (image_tokens * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)
            image_mask = torch.cat([image_attention_mask.new_ones(image_tokens.shape[0], 1), image_attention_mask], 1)
        else:
            average = image_tokens.mean(dim=1)
        # METER's image "CLS": the average image token, in front of the tokens.
        image_tokens = torch.cat([average[:, None], image_tokens], dim=1)
        text_tokens = text_outputs.last_hidden_state
        return {
            "vision_outputs": vision_outputs,
            "text_outputs": text_outputs,
            "text_embeds": self.fusion.embed_text(text_tokens),
            "image_embeds": self.fusion.embed_image(image_tokens),
            "text_mask": attention_mask,
            "image_mask": image_mask,
        }

    def fuse(self, pixel_values, input_ids, attention_mask=None, image_attention_mask=None,
             output_hidden_states=False, output_attentions=False, return_streams=False, image_hidden_states=None):
        """Towers + fusion: the [`FlorenceFusionModelOutput`] of image-text pairs (and the `encode` streams, with
        `return_streams`)."""
        streams = self.encode(pixel_values, input_ids, attention_mask, image_attention_mask,
                              output_hidden_states, output_attentions, image_hidden_states)
        text_fusion, image_fusion = self.fusion(
            streams["text_embeds"], streams["image_embeds"], streams["text_mask"], streams["image_mask"],
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        output = FlorenceFusionModelOutput(
            pooler_output=torch.cat([text_fusion.pooler_output, image_fusion.pooler_output], dim=-1),
            text_fusion_output=text_fusion,
            image_fusion_output=image_fusion,
            text_model_output=streams["text_outputs"],
            vision_model_output=streams["vision_outputs"],
        )
        return (output, streams) if return_streams else output


def check_pair_inputs(pixel_values, input_ids, attention_mask, image_hidden_states=None) -> None:
    """Clear errors for a missing image or question and for batches that do not pair up."""
    if pixel_values is None and image_hidden_states is None:
        raise ValueError("pixel_values is required: every question needs its image")
    if pixel_values is not None and image_hidden_states is not None:
        raise ValueError("Pass either pixel_values or image_hidden_states (the image tower's output), not both")
    if input_ids is None:
        raise ValueError("input_ids is required: every image needs its question (tokenised text)")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
    if pixel_values is not None and pixel_values.ndim == 4 and pixel_values.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"Got {pixel_values.shape[0]} images but {input_ids.shape[0]} questions: pass one image per question "
            "(repeat an image for several questions about it)"
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )


class FlorenceFusionModel(FlorenceFusionPreTrainedModel):
    """The METER fusion model on Florence's towers: image and text tokens, projected and typed, through co-attention
    layers; `pooler_output` concatenates the two streams' poolers."""

    def __init__(self, config: FlorenceVQAConfig):
        super().__init__(config)
        self._build_fusion(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        image_hidden_states: torch.Tensor | None = None,
        **kwargs,
    ) -> FlorenceFusionModelOutput | tuple:
        r"""
        pixel_values: `(B, 3, H, W)` images, one per text.
        input_ids, attention_mask: `(B, T)` texts and their padding mask (1 = token, 0 = padding).
        image_attention_mask: optional `(B, L)` 0/1 mask over the image tokens entering the fusion (those of every
            `vision_feature_stages` entry, in order; e.g. padded images); the average image token is then the
            average of the kept tokens.
        image_hidden_states: optional image tower output computed beforehand (`get_image_hidden_states`: the
            `(B, L, C)` `last_hidden_state`, or one `(B, L_i, C_i)` tensor per `vision_feature_stages` entry), in
            place of `pixel_values` (e.g. a frozen tower's features, computed once).
        """
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        output = self.fuse(pixel_values, input_ids, attention_mask, image_attention_mask,
                           output_hidden_states, output_attentions, image_hidden_states=image_hidden_states)
        return output if return_dict else output.to_tuple()


class FlorenceVQAHead(nn.Module):
    """METER's VQA classifier: Linear(2H, 2H) -> LayerNorm -> GELU -> Linear(2H, num_labels)."""

    def __init__(self, config: FlorenceVQAConfig):
        super().__init__()
        width = 2 * config.hidden_size
        self.dense = nn.Linear(width, width)
        self.layer_norm = nn.LayerNorm(width, eps=1e-5)
        self.activation = nn.GELU()
        self.classifier = nn.Linear(width, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.activation(self.layer_norm(self.dense(pooled))))


def vqa_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """METER's VQA loss: mean BCE-with-logits against the soft scores, times the number of answers."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype)) * labels.shape[1]


class FlorenceForVQA(FlorenceFusionPreTrainedModel):
    """Visual question answering: the fusion model and METER's classifier over the answer vocabulary
    (`config.id2label`), trained with BCE on soft VQA scores."""

    def __init__(self, config: FlorenceVQAConfig):
        super().__init__(config)
        self._build_fusion(config)
        self.vqa_head = FlorenceVQAHead(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        image_hidden_states: torch.Tensor | None = None,
        **kwargs,
    ) -> FlorenceVQAOutput | tuple:
        r"""
        labels: `(B, num_labels)` soft VQA scores (`min(1, 0.3 * votes)` per answer), as `FlorenceVQAProcessor`
            returns them for `answers=`.
        image_hidden_states: optional image tower output computed beforehand (`get_image_hidden_states`), in place
            of `pixel_values` (see [`FlorenceFusionModel.forward`]).
        """
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        if labels is not None and (labels.ndim != 2 or labels.shape[1] != self.config.num_labels):
            raise ValueError(
                f"labels must be (batch, num_labels={self.config.num_labels}) soft scores over the answer vocabulary, "
                f"got shape {tuple(labels.shape)}"
            )
        fused = self.fuse(pixel_values, input_ids, attention_mask, image_attention_mask,
                          output_hidden_states, output_attentions, image_hidden_states=image_hidden_states)
        if labels is not None and labels.shape[0] != input_ids.shape[0]:
            raise ValueError(f"Got {labels.shape[0]} label rows for {input_ids.shape[0]} questions")
        logits = self.vqa_head(fused.pooler_output)
        output = FlorenceVQAOutput(
            loss=vqa_loss(logits, labels) if labels is not None else None,
            logits=logits,
            **{key: fused[key] for key in fused.keys()},
        )
        return output if return_dict else output.to_tuple()


class FlorenceMLMHead(nn.Module):
    """BERT's MLM head on the fused text tokens: Linear -> activation -> LayerNorm -> decoder over the vocabulary."""

    def __init__(self, config: FlorenceVQAConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.text_config.vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(self.activation_fn(self.dense(hidden_states))))


def sample_negatives(similarity: torch.Tensor, positives: torch.Tensor, hard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, one column that is not a positive of it: drawn with probability softmax(similarity / 0.07) (hard
    negatives) or uniformly. Returns `(indices, valid)`; rows whose every column is a positive are not valid."""
    allowed = ~positives
    valid = allowed.any(dim=1)
    if hard:
        logits = similarity.float() / HARD_NEGATIVE_TEMPERATURE
        logits = logits - logits.max(dim=1, keepdim=True).values
        weights = logits.exp() * allowed
    else:
        weights = allowed.float()
    weights = torch.where(valid[:, None], weights, torch.ones_like(weights))
    # An underflowed row (all allowed weights 0) falls back to uniform over the allowed columns.
    weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, allowed.float() + (~valid[:, None]).float())
    return torch.multinomial(weights, 1).squeeze(1), valid


class FlorenceForVisionLanguagePretraining(FlorenceFusionPreTrainedModel):
    """Fusion pretraining on image-text pairs: image-text matching (ITM, with hard negatives sampled from the in-batch
    similarities) and masked language modelling (MLM) on the fused text tokens."""

    def __init__(self, config: FlorenceVQAConfig):
        super().__init__(config)
        self._build_fusion(config)
        self.itm_head = nn.Linear(2 * config.hidden_size, 2)
        self.mlm_head = FlorenceMLMHead(config)
        self.post_init()

    def negative_pairs(self, streams: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """`(image index, text index)` of one sampled negative per image and one per text, ALBEF/METER style.

        Similarities are the cosine of the projected average image token and the projected first text token (the
        fusion's inputs, `streams` from `encode`); pairs whose texts are identical count as positives and are never
        drawn. Rows with no possible negative (a batch of one text) contribute none."""
        with torch.no_grad():
            image = F.normalize(streams["image_embeds"][:, 0].float(), dim=-1)
            text = F.normalize(streams["text_embeds"][:, 0].float(), dim=-1)
            similarity = image @ text.t()
            ids = input_ids if attention_mask is None else input_ids * attention_mask
            positives = (ids[:, None, :] == ids[None, :, :]).all(-1)
            hard = self.config.itm_hard_negatives
            negative_text, text_valid = sample_negatives(similarity, positives, hard)
            negative_image, image_valid = sample_negatives(similarity.t(), positives.t(), hard)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        images = torch.cat([rows[text_valid], negative_image[image_valid]])
        texts = torch.cat([negative_text[text_valid], rows[image_valid]])
        return images, texts

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        itm_labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> FlorenceVisionLanguagePretrainingOutput | tuple:
        r"""
        input_ids: `(B, T)` texts, masked for MLM where `mlm_labels` is set (see `mask_tokens`).
        mlm_labels: `(B, T)` original ids at the masked positions, -100 elsewhere: adds the MLM loss. The ITM pass
            reads the unmasked texts (these labels written back into `input_ids`).
        itm_labels: `(B,)` 1 = the pair matches, 0 = it does not: ITM loss on the given pairs. Without them (and with
            `return_loss`), every given pair is a positive and one negative per image and per text is sampled.
        return_loss: compute the losses (implied by `mlm_labels` or `itm_labels`).
        """
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        return_loss = return_loss if return_loss is not None else mlm_labels is not None or itm_labels is not None
        if mlm_labels is not None and input_ids is not None and mlm_labels.shape != input_ids.shape:
            raise ValueError(f"mlm_labels shape {tuple(mlm_labels.shape)} must match input_ids {tuple(input_ids.shape)}")
        if itm_labels is not None and input_ids is not None and itm_labels.shape != (input_ids.shape[0],):
            raise ValueError(f"itm_labels must have shape ({input_ids.shape[0]},), got {tuple(itm_labels.shape)}")
        fused, streams = self.fuse(pixel_values, input_ids, attention_mask, None, output_hidden_states,
                                   output_attentions, return_streams=True)
        itm_logits = self.itm_head(fused.pooler_output)
        mlm_logits = self.mlm_head(fused.text_fusion_output.last_hidden_state)

        itm_loss = mlm_loss = loss = None
        if return_loss:
            if mlm_labels is not None:
                mlm_loss = F.cross_entropy(mlm_logits.flatten(0, 1).float(), mlm_labels.flatten(), ignore_index=-100)
            itm_loss = self.itm_loss(pixel_values, input_ids, attention_mask, mlm_labels, itm_labels, streams)
            loss = itm_loss if mlm_loss is None else itm_loss + mlm_loss
        output = FlorenceVisionLanguagePretrainingOutput(
            loss=loss,
            itm_loss=itm_loss,
            mlm_loss=mlm_loss,
            itm_logits=itm_logits,
            mlm_logits=mlm_logits,
            **{key: fused[key] for key in fused.keys()},
        )
        return output if return_dict else output.to_tuple()

    def itm_loss(self, pixel_values, input_ids, attention_mask, mlm_labels, itm_labels, streams) -> torch.Tensor:
        """ITM cross-entropy over the given pairs (with `itm_labels`) or over the positives plus sampled negatives.

        The pairs are fused in one pass from the towers' outputs of the unmasked texts (`streams`: those of the main
        pass when nothing was masked), indexed, so each tower runs at most once more per step."""
        texts = input_ids
        if mlm_labels is not None:
            texts = torch.where(mlm_labels != -100, mlm_labels, input_ids)
            streams = self.encode(pixel_values, texts, attention_mask, None, False, False)
        rows = torch.arange(texts.shape[0], device=texts.device)
        if itm_labels is not None:
            images_index, texts_index, labels = rows, rows, itm_labels.long()
        else:
            negative_images, negative_texts = self.negative_pairs(streams, texts, attention_mask)
            images_index, texts_index = torch.cat([rows, negative_images]), torch.cat([rows, negative_texts])
            labels = torch.cat([torch.ones_like(rows), torch.zeros_like(negative_images)])
        text_mask = None if attention_mask is None else attention_mask[texts_index]
        text_fusion, image_fusion = self.fusion(
            streams["text_embeds"][texts_index], streams["image_embeds"][images_index], text_mask, None
        )
        logits = self.itm_head(torch.cat([text_fusion.pooler_output, image_fusion.pooler_output], dim=-1))
        return F.cross_entropy(logits.float(), labels)


__all__ = [
    "FlorenceForVQA",
    "FlorenceForVisionLanguagePretraining",
    "FlorenceFusionModel",
    "FlorenceFusionModelOutput",
    "FlorenceFusionPreTrainedModel",
    "FlorenceVQAOutput",
    "FlorenceVisionLanguagePretrainingOutput",
    "vqa_loss",
]
