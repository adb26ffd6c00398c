# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""The Florence two-tower model: CoSwin image tower, CLIP-style text tower, projections and the UniCL loss.

Module names follow Transformers' CLIP (`embeddings.token_embedding`, `encoder.layers.N.self_attn.q_proj`, ...,
`visual_projection`, `text_projection`, `logit_scale`), so CLIP-style code, PEFT target names and the
zero-shot-image-classification pipeline work unchanged.
"""

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_florence import FlorenceConfig, FlorenceTextConfig
from .loss_florence import global_batch_unicl_loss, unicl_loss
from .modeling_coswin import (
    FlorencePreTrainedBase,
    FlorenceVisionModel,
    FlorenceVisionModelOutput,
    attention_function,
    eager_attention_forward,
    init_linear_or_layer_norm,
    is_tracing,
    resolve_output_flags,
)


# ----------------------------------------------------------------------------------------------------------------------
# Text tower
# ----------------------------------------------------------------------------------------------------------------------
def init_std(module: nn.Module, std: float) -> nn.Module:
    """Record on a layer the std of its normal init (CLIP's depth-scaled scheme), read by `_init_weights`.

    Kept on the layer itself because Transformers initialises the layers of a checkpoint's missing weights one by
    one: their parents (attention, MLP) are never visited then, so a parent-level rule would leave them empty."""
    module.init_std = std
    return module


class FlorenceTextEmbeddings(nn.Module):
    def __init__(self, config: FlorenceTextConfig):
        super().__init__()
        factor = config.initializer_factor or 1.0
        self.token_embedding = init_std(nn.Embedding(config.vocab_size, config.hidden_size), 0.02 * factor)
        self.position_embedding = init_std(
            nn.Embedding(config.max_position_embeddings, config.hidden_size), 0.01 * factor
        )
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).unsqueeze(0), persistent=False
        )

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[-1]
        table = self.position_embedding.num_embeddings
        if position_ids is None:
            position_ids = self.position_ids[:, :length]
        elif position_ids.numel() and (position_ids.min() < 0 or position_ids.max() >= table):
            raise ValueError(f"position_ids must lie in [0, {table}) (max_position_embeddings), got values from "
                             f"{position_ids.min().item()} to {position_ids.max().item()}")
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


class FlorenceAttention(nn.Module):
    """Multi-head attention of `hidden_states` over a context (themselves, or another stream) with separate
    `q_proj, k_proj, v_proj, out_proj` projections (the names PEFT targets), through the configured kernel
    (`modeling_coswin.attention_function`). Shared by the text tower and the VQA fusion layers."""

    def __init__(self, config, dropout: float, is_causal: bool):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.is_causal = is_causal
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def attend(
        self,
        hidden_states: torch.Tensor,
        context: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        context_shape = (batch, context.shape[1], self.num_heads, self.head_dim)
        key = self.k_proj(context).view(context_shape).transpose(1, 2)
        value = self.v_proj(context).view(context_shape).transpose(1, 2)
        attention_interface = attention_function(self.config, output_attentions)
        if self.is_causal and attention_mask is None and attention_interface is eager_attention_forward:
            # Only fused kernels understand `is_causal`; the reference path needs the mask spelled out.
            attention_mask = torch.full((length, length), torch.finfo(query.dtype).min, dtype=query.dtype,
                                        device=query.device).triu_(1)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            is_causal=self.is_causal,
            **kwargs,
        )
        return self.out_proj(attn_output.reshape(batch, length, self.embed_dim)), attn_weights


class FlorenceTextAttention(FlorenceAttention):
    """The text tower's self-attention: causal (CLIP, the default) or bidirectional (a fusion model's text encoder),
    chosen at construction; CLIP's depth-scaled init recorded on each projection."""

    def __init__(self, config: FlorenceTextConfig):
        super().__init__(config, config.attention_dropout, is_causal=getattr(config, "causal_attention", True))
        factor = config.initializer_factor or 1.0
        in_std = self.embed_dim**-0.5 * (2 * config.num_hidden_layers) ** -0.5 * factor
        for projection in (self.q_proj, self.k_proj, self.v_proj):
            init_std(projection, in_std)
        init_std(self.out_proj, self.embed_dim**-0.5 * factor)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        **kwargs,
    ):
        return self.attend(hidden_states, hidden_states, attention_mask, output_attentions, **kwargs)


class FlorenceTextMLP(nn.Module):
    def __init__(self, config: FlorenceTextConfig):
        super().__init__()
        factor = config.initializer_factor or 1.0
        width, depth = config.hidden_size, config.num_hidden_layers
        self.fc1 = init_std(nn.Linear(width, config.intermediate_size), (2 * width) ** -0.5 * factor)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = init_std(nn.Linear(config.intermediate_size, width), width**-0.5 * (2 * depth) ** -0.5 * factor)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class FlorenceTextLayer(GradientCheckpointingLayer):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: FlorenceTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = FlorenceTextAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = FlorenceTextMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        **kwargs,
    ):
        attn_output, attn_weights = self.self_attn(
            self.layer_norm1(hidden_states), attention_mask, output_attentions=output_attentions, **kwargs
        )
        hidden_states = hidden_states + attn_output
        hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))
        return hidden_states, attn_weights


class FlorenceTextEncoder(nn.Module):
    def __init__(self, config: FlorenceTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(FlorenceTextLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states, attention_mask=None, output_hidden_states=False, output_attentions=False, **kw):
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, attn_weights = layer(hidden_states, attention_mask, output_attentions=output_attentions, **kw)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        return hidden_states, all_hidden_states, all_attentions


class FlorencePreTrainedModel(FlorencePreTrainedBase):
    config_class = FlorenceConfig
    base_model_prefix = "florence"
    input_modalities = ("image", "text")
    _no_split_modules = ["FlorenceTextEmbeddings", "FlorenceTextLayer", "FlorenceVisionLayer"]

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """`set_attn_implementation` works: every attention layer (text here, CoSwin's in the image tower) picks its
        kernel per call from `ALL_ATTENTION_FUNCTIONS` (`modeling_coswin.attention_function`), which Transformers'
        source heuristic does not see through."""
        return True

    @torch.no_grad()
    def _init_weights(self, module):
        """CLIP's text init (normal, std scaled by width and depth, recorded on each layer by `init_std`), zero
        biases, LayerNorms at identity; bias-free projections; the image tower keeps Swin's own init."""
        std = getattr(module, "init_std", getattr(self.config, "initializer_range", 0.02))
        if init_linear_or_layer_norm(module, std):
            return
        if isinstance(module, FlorenceTextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).unsqueeze(0))
        elif isinstance(module, FlorenceModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


def check_token_values(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int) -> None:
    """Clear errors for ids the embedding cannot look up and texts that attend to nothing."""
    if input_ids.is_floating_point():
        raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"input_ids holds token ids in [{low}, {high}], outside the vocabulary [0, {vocab_size - 1}] of this "
            "text model (tokenise with the model's own tokenizer)"
        )
    if attention_mask is not None:
        empty = (~attention_mask.bool().any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"attention_mask is all zeros for text(s) {empty}: every text needs at least one attended token"
            )


class FlorenceTextModel(FlorencePreTrainedModel):
    """CLIP-style causal pre-LN text transformer, pooled at the first end-of-text token.

    With `config.causal_attention=False` the same tower attends bidirectionally (padding masked), as a fusion model's
    text encoder does."""

    config_class = FlorenceTextConfig
    # The attribute holding the text tower in FlorenceModel: this class loads it from a two-tower folder.
    base_model_prefix = "text_model"
    _keys_to_ignore_on_load_unexpected = [
        r"^vision_model\.",
        r"^text_projection\.",
        r"^visual_projection\.",
        r"^logit_scale$",
    ]
    input_modalities = ("text",)
    main_input_name = "input_ids"
    _no_split_modules = ["FlorenceTextEmbeddings", "FlorenceTextLayer"]

    def __init__(self, config: FlorenceTextConfig):
        super().__init__(config)
        self.embeddings = FlorenceTextEmbeddings(config)
        self.encoder = FlorenceTextEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Embedding):
        self.embeddings.token_embedding = value

    def _attention_mask(self, attention_mask: torch.Tensor | None, length: int, dtype, device):
        """Additive `(B, 1, L, L)` causal + padding mask (`(B, 1, 1, L)` padding only for a bidirectional tower), or
        None without a padding mask.

        None lets SDPA run its fused causal kernel (`is_causal`); the eager path builds the causal mask itself. The
        choice depends on whether a mask was passed, never on its values, so the graph exports as one.
        """
        if attention_mask is None:
            return None
        min_value = torch.finfo(dtype).min
        padding = (1.0 - attention_mask[:, None, None, :].to(dtype)) * min_value
        if not getattr(self.config, "causal_attention", True):
            return padding
        causal = torch.full((length, length), min_value, dtype=dtype, device=device).triu_(1)[None, None]
        return (causal + padding).clamp(min=min_value)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        if input_ids is None:
            raise ValueError("input_ids is required")
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids has {length} tokens but the text model has {self.config.max_position_embeddings} "
                "positions; truncate the text (the Florence processor does with truncation=True)"
            )
        if input_ids.shape[0] == 0 or length == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): pass at least one token per text")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        if not is_tracing():
            check_token_values(input_ids, attention_mask, self.config.vocab_size)
        kwargs.pop("token_type_ids", None)

        hidden_states = self.embeddings(input_ids, position_ids)
        mask = self._attention_mask(attention_mask, length, hidden_states.dtype, hidden_states.device)
        hidden_states, all_hidden_states, all_attentions = self.encoder(
            hidden_states, mask, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        last_hidden_state = self.final_layer_norm(hidden_states)
        # Pool at the first end-of-text token; rows without one (e.g. hand-built ids) fall back to the last token.
        is_eos = input_ids == self.config.eos_token_id
        eos_index = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), length - 1)
        pooled_output = last_hidden_state[torch.arange(input_ids.shape[0], device=input_ids.device), eos_index]
        output = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------------------------------------------------
# Two-tower model
# ----------------------------------------------------------------------------------------------------------------------
def encode_pairs(model, pixel_values, input_ids, attention_mask, position_ids, output_hidden_states, output_attentions):
    """Both towers of a two-tower model ([`FlorenceTwoTowerMixin`]): their outputs and the L2-normalised projected
    features `(vision, text, vision_embeds, text_embeds)`. Shared by the image and the video models."""
    flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions, "return_dict": True}
    vision_outputs = model.vision_model(pixel_values=pixel_values, **flags)
    text_outputs = model.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **flags)
    vision_embeds = F.normalize(model.visual_projection(vision_outputs.pooler_output), dim=-1)
    text_embeds = F.normalize(model.text_projection(text_outputs.pooler_output), dim=-1)
    return vision_outputs, text_outputs, vision_embeds, text_embeds


def nested_to_tuple(output: ModelOutput) -> tuple[Any]:
    """`to_tuple` that turns nested model outputs (the towers' or the fusion streams') into tuples too, as
    Transformers' `CLIPOutput.to_tuple` does."""
    return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in output.values())


def two_tower_output_class(name: str, noun: str, vision_output_class: type, doc: str, module: str) -> type:
    """The output dataclass of a two-tower model, field for field Transformers' `CLIPOutput` with its vision side
    named after `noun` ("image": `logits_per_image`, `image_embeds`): `loss`, `logits_per_<noun>`,
    `logits_per_text`, `text_embeds`, `<noun>_embeds`, `text_model_output`, `vision_model_output`; `to_tuple` turns
    the towers' outputs into tuples. One definition for [`FlorenceModel`] and `FlorenceVideoModel`."""
    tensor = torch.FloatTensor | None
    fields = [
        ("loss", tensor),
        (f"logits_per_{noun}", tensor),
        ("logits_per_text", tensor),
        ("text_embeds", tensor),
        (f"{noun}_embeds", tensor),
        ("text_model_output", BaseModelOutputWithPooling | None),
        ("vision_model_output", vision_output_class | None),
    ]
    # `__module__` in the namespace: the class is created (and registered as a pytree node by `ModelOutput`) under
    # its real module, not `types`.
    namespace = {"__module__": module, "__doc__": doc, "to_tuple": nested_to_tuple}
    return dataclasses.make_dataclass(
        name, [(field, kind, dataclasses.field(default=None)) for field, kind in fields], bases=(ModelOutput,),
        namespace=namespace,
    )


FlorenceOutput = two_tower_output_class(
    "FlorenceOutput",
    "image",
    FlorenceVisionModelOutput,
    """
    Output of [`FlorenceModel`], field for field that of Transformers' `CLIPOutput`.

    Args:
        loss: UniCL loss, when `return_loss` (or `labels`) is given.
        logits_per_image: `(images, texts)` scaled cosine similarities of the call's images and texts.
        logits_per_text: `(texts, images)`.
        text_embeds, image_embeds: L2-normalised projected features of this process's batch.
        text_model_output, vision_model_output: the towers' outputs.
    """,
    __name__,
)


class FlorenceTwoTowerMixin:
    """The two-tower contract shared by [`FlorenceModel`] (images) and `FlorenceVideoModel` (clips): towers and
    projections (one init mechanism: `init_std` on each projection), input checks, `get_text_features`, the
    vision-side features, the CLIP temperature, the UniCL loss call and the output.

    A subclass names its vision tower class and its output: `vision_tower_class`, `output_class`, the output's
    vision-side field names (`logits_name`, `embeds_name`) and what a vision input is called in messages (`items`)."""

    vision_tower_class: type[nn.Module]
    output_class: type[ModelOutput]
    logits_name: str = "logits_per_image"
    embeds_name: str = "image_embeds"
    items: str = "images"
    pair_name: str = "image"

    def build_towers(self, config) -> None:
        """The towers, the bias-free projections (CLIP's init, recorded on each by `init_std`) and the temperature."""
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_embed_dim = config.text_config.hidden_size
        self.vision_model = self.vision_tower_class._from_config(config.vision_config)
        self.text_model = FlorenceTextModel._from_config(config.text_config)
        factor = config.initializer_factor or 1.0
        self.visual_projection = init_std(
            nn.Linear(self.vision_embed_dim, config.projection_dim, bias=False), self.vision_embed_dim**-0.5 * factor
        )
        self.text_projection = init_std(
            nn.Linear(self.text_embed_dim, config.projection_dim, bias=False), self.text_embed_dim**-0.5 * factor
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """The text tower's output whose `pooler_output` is the projected (not normalised) text feature
        `(B, projection_dim)`, as `CLIPModel.get_text_features` in Transformers 5."""
        flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        return self.projected_text_outputs(input_ids, attention_mask, position_ids, **flags, **kwargs)

    def projected_text_outputs(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        """The text tower's output whose `pooler_output` is the projected (not normalised) text feature."""
        text_outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        text_outputs.pooler_output = self.text_projection(text_outputs.pooler_output)
        return text_outputs

    def projected_vision_outputs(self, pixel_values: torch.Tensor, **kwargs):
        """The vision tower's output whose `pooler_output` is the projected (not normalised) vision feature."""
        vision_outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        vision_outputs.pooler_output = self.visual_projection(vision_outputs.pooler_output)
        return vision_outputs

    def temperature(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100 as in CLIP so the softmax cannot collapse onto one pair."""
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def check_pairs(self, input_ids, pixel_values, labels, return_loss: bool | None) -> bool:
        """Clear errors for a call the model cannot score; returns whether the loss is asked for."""
        if input_ids is None or pixel_values is None:
            raise ValueError(f"{type(self).__name__}.forward needs both input_ids and pixel_values ({self.items})")
        return_loss = return_loss if return_loss is not None else labels is not None
        if return_loss and input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"The UniCL loss needs {self.pair_name}-text pairs, but got {pixel_values.shape[0]} {self.items} and "
                f"{input_ids.shape[0]} texts"
            )
        if return_loss and labels is not None and labels.shape != (input_ids.shape[0],):
            raise ValueError(
                f"labels must have shape ({input_ids.shape[0]},): one int64 UniCL label per {self.pair_name}-text "
                f"pair, got {tuple(labels.shape)}"
            )
        return return_loss

    def score_pairs(self, input_ids, pixel_values, labels=None, return_loss=None, attention_mask=None,
                    position_ids=None, output_hidden_states=None, output_attentions=None, return_dict=None):
        """The two-tower forward: both towers, the scaled cosine similarities, the UniCL loss when asked for."""
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        return_loss = self.check_pairs(input_ids, pixel_values, labels, return_loss)
        vision_outputs, text_outputs, vision_embeds, text_embeds = encode_pairs(
            self, pixel_values, input_ids, attention_mask, position_ids, output_hidden_states, output_attentions
        )
        scale = self.temperature()
        # The call's own (texts, images) scores: inference never communicates across processes.
        logits_per_text = scale * text_embeds @ vision_embeds.t()
        # The training loss is the only collective: under torch.distributed it compares this process's pairs with
        # the global batch (gathered with gradients), so N processes of b pairs equal one process with N * b.
        loss = global_batch_unicl_loss(vision_embeds, text_embeds, scale, labels) if return_loss else None
        output = self.output_class(
            loss=loss,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            **{self.logits_name: logits_per_text.t(), self.embeds_name: vision_embeds},
        )
        return output if return_dict else output.to_tuple()


class FlorenceModel(FlorenceTwoTowerMixin, FlorencePreTrainedModel):
    """Florence: CoSwin image tower + text tower, bias-free projections, learnable temperature, UniCL loss."""

    config_class = FlorenceConfig
    main_input_name = "input_ids"
    vision_tower_class = FlorenceVisionModel
    output_class = FlorenceOutput

    def __init__(self, config: FlorenceConfig):
        super().__init__(config)
        self.build_towers(config)
        self.post_init()

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> FlorenceVisionModelOutput | tuple:
        """The image tower's output (a `BaseModelOutputWithPooling` with the per-stage maps) whose `pooler_output` is
        the projected (not normalised) image feature `(B, projection_dim)`."""
        return self.projected_vision_outputs(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions, **kwargs
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> FlorenceOutput | tuple:
        r"""
        labels: `(B,)` int64 UniCL labels, one per image-text pair (pairs with equal labels are positives of each
            other); without them each image's positive is its own text (CLIP). Giving labels implies `return_loss`.
        return_loss: whether to compute the UniCL loss.
        """
        kwargs.pop("token_type_ids", None)
        return self.score_pairs(
            input_ids, pixel_values, labels, return_loss, attention_mask, position_ids, output_hidden_states,
            output_attentions, return_dict,
        )


__all__ = [
    "FlorenceModel",
    "FlorenceOutput",
    "FlorencePreTrainedModel",
    "FlorenceTextModel",
    "unicl_loss",
]
