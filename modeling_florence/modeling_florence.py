# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""The Florence two-tower model: CoSwin image tower, CLIP-style text tower, projections and the UniCL loss.

Module names follow Transformers' CLIP (`embeddings.token_embedding`, `encoder.layers.N.self_attn.q_proj`, ...,
`visual_projection`, `text_projection`, `logit_scale`), so CLIP-style code, PEFT target names and the
zero-shot-image-classification pipeline work unchanged.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_florence import FlorenceConfig, FlorenceTextConfig, FlorenceVisionConfig
from .modeling_coswin import (
    FlorenceVisionModel,
    FlorenceVisionModelOutput,
    eager_attention_forward,
    resolve_output_flags,
)


# ----------------------------------------------------------------------------------------------------------------------
# UniCL loss
# ----------------------------------------------------------------------------------------------------------------------
def unicl_loss(
    logits_per_image: torch.Tensor,
    labels: torch.Tensor,
    logits_per_text: torch.Tensor | None = None,
    row_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """UniCL loss (Florence Eq. 1-3): L = L_i2t + L_t2i, each averaged over its rows.

    Every pair whose text label equals the row's label is a positive, weighted 1/|P(i)|; with all labels distinct
    this is the symmetric InfoNCE of CLIP written as a sum (twice Transformers' `clip_loss`, which averages the two).

    Args:
        logits_per_image: `(rows, columns)` scaled similarities of row images to column texts.
        labels: `(columns,)` int64 labels of the column pairs (the global batch when training distributed).
        logits_per_text: `(rows, columns)` similarities of row texts to column images; defaults to
            `logits_per_image.T` (the single-process, square case).
        row_labels: `(rows,)` labels of the row pairs; defaults to `labels` (square case).
    """
    if logits_per_text is None:
        logits_per_text = logits_per_image.t()
    if row_labels is None:
        row_labels = labels
    if logits_per_image.ndim != 2 or logits_per_text.shape != logits_per_image.shape:
        raise ValueError(
            f"logits_per_image and logits_per_text must be 2-D of one shape, got {tuple(logits_per_image.shape)} "
            f"and {tuple(logits_per_text.shape)}"
        )
    rows, columns = logits_per_image.shape
    if labels.shape != (columns,) or row_labels.shape != (rows,):
        raise ValueError(
            f"labels must have shape ({columns},) and row labels ({rows},) to match logits of shape {(rows, columns)}, "
            f"got {tuple(labels.shape)} and {tuple(row_labels.shape)}"
        )
    positives = (row_labels[:, None] == labels[None, :]).to(logits_per_image.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True).clamp(min=1)
    loss_i2t = -(targets * F.log_softmax(logits_per_image, dim=-1)).sum(dim=-1).mean()
    loss_t2i = -(targets * F.log_softmax(logits_per_text, dim=-1)).sum(dim=-1).mean()
    return loss_i2t + loss_t2i


def _distributed_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each process the gradient of its own slice, summed over the
    losses of all processes (every process's loss depends on every process's features)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world_size, rank = _distributed_world()
        ctx.rank, ctx.batch = rank, tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad_output = grad_output.contiguous()
        dist.all_reduce(grad_output, op=dist.ReduceOp.SUM)
        return grad_output[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, keeping the autograd graph to each process's slice."""
    world_size, _ = _distributed_world()
    if world_size == 1:
        return tensor
    _check_equal_batches(tensor)
    return _GatherWithGrad.apply(tensor)


def _check_equal_batches(tensor: torch.Tensor) -> None:
    """Collectives need one batch size everywhere; say so instead of hanging or mixing up rows."""
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.empty_like(size) for _ in range(_distributed_world()[0])]
    dist.all_gather(sizes, size)
    if len({int(s) for s in sizes}) > 1:
        raise ValueError(
            f"Processes hold different batch sizes {[int(s) for s in sizes]}; the global UniCL batch needs equal "
            "per-process batches (use drop_last=True in the data loader)"
        )


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    world_size, _ = _distributed_world()
    if world_size == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


# ----------------------------------------------------------------------------------------------------------------------
# Text tower
# ----------------------------------------------------------------------------------------------------------------------
class FlorenceTextEmbeddings(nn.Module):
    def __init__(self, config: FlorenceTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).unsqueeze(0), persistent=False
        )

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[-1]
        if position_ids is None:
            position_ids = self.position_ids[:, :length]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


class FlorenceTextAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (the names PEFT targets)."""

    def __init__(self, config: FlorenceTextConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = True
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if attention_mask is None and attention_interface is eager_attention_forward:
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
            is_causal=True,
            **kwargs,
        )
        return self.out_proj(attn_output.reshape(batch, length, self.embed_dim)), attn_weights


class FlorenceTextMLP(nn.Module):
    def __init__(self, config: FlorenceTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

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

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        attn_output, attn_weights = self.self_attn(self.layer_norm1(hidden_states), attention_mask, **kwargs)
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
            hidden_states, attn_weights = layer(hidden_states, attention_mask, **kw)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        return hidden_states, all_hidden_states, all_attentions


class FlorencePreTrainedModel(PreTrainedModel):
    config_class = FlorenceConfig
    base_model_prefix = "florence"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["FlorenceTextEmbeddings", "FlorenceTextLayer", "FlorenceVisionLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        """CLIP's text init (scaled by depth) and bias-free projections; the image tower keeps Swin's own init."""
        config = self.config
        text_config = getattr(config, "text_config", config)
        factor = getattr(text_config, "initializer_factor", 1.0) or 1.0
        if isinstance(module, FlorenceTextEmbeddings):
            init.normal_(module.token_embedding.weight, std=0.02 * factor)
            init.normal_(module.position_embedding.weight, std=0.01 * factor)
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).unsqueeze(0))
        elif isinstance(module, FlorenceTextAttention):
            in_std = module.embed_dim**-0.5 * (2 * text_config.num_hidden_layers) ** -0.5 * factor
            for proj in (module.q_proj, module.k_proj, module.v_proj):
                init.normal_(proj.weight, std=in_std)
                init.zeros_(proj.bias)
            init.normal_(module.out_proj.weight, std=module.embed_dim**-0.5 * factor)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, FlorenceTextMLP):
            width = text_config.hidden_size
            init.normal_(module.fc1.weight, std=(2 * width) ** -0.5 * factor)
            init.normal_(module.fc2.weight, std=width**-0.5 * (2 * text_config.num_hidden_layers) ** -0.5 * factor)
            init.zeros_(module.fc1.bias)
            init.zeros_(module.fc2.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, FlorenceModel):
            init.normal_(module.visual_projection.weight, std=module.vision_embed_dim**-0.5 * factor)
            init.normal_(module.text_projection.weight, std=module.text_embed_dim**-0.5 * factor)
            init.constant_(module.logit_scale, config.logit_scale_init_value)


class FlorenceTextModel(FlorencePreTrainedModel):
    """CLIP-style causal pre-LN text transformer, pooled at the first end-of-text token."""

    config_class = FlorenceTextConfig
    base_model_prefix = "florence_text"
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
        """Additive `(B, 1, L, L)` causal + padding mask, or None when nothing is padded.

        None lets SDPA run its fused causal kernel (`is_causal`); the eager path builds the causal mask itself.
        """
        if attention_mask is None or bool(attention_mask.all()):
            return None
        min_value = torch.finfo(dtype).min
        causal = torch.full((length, length), min_value, dtype=dtype, device=device).triu_(1)[None, None]
        padding = (1.0 - attention_mask[:, None, None, :].to(dtype)) * min_value
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
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
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
@dataclass
class FlorenceOutput(ModelOutput):
    """
    Output of [`FlorenceModel`], field for field that of Transformers' `CLIPOutput`.

    Args:
        loss: UniCL loss, when `return_loss` (or `labels`) is given.
        logits_per_image: `(images, texts)` scaled cosine similarities (texts of the global batch when distributed).
        logits_per_text: `(texts, images)`.
        text_embeds, image_embeds: L2-normalised projected features of this process's batch.
        text_model_output, vision_model_output: the towers' outputs.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: FlorenceVisionModelOutput | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(
            self[k] if k not in ("text_model_output", "vision_model_output") else getattr(self, k).to_tuple()
            for k in self.keys()
        )


class FlorenceModel(FlorencePreTrainedModel):
    """Florence: CoSwin image tower + text tower, bias-free projections, learnable temperature, UniCL loss."""

    config_class = FlorenceConfig
    main_input_name = "input_ids"

    def __init__(self, config: FlorenceConfig):
        super().__init__(config)
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_embed_dim = config.text_config.hidden_size
        self.vision_model = FlorenceVisionModel._from_config(config.vision_config)
        self.text_model = FlorenceTextModel._from_config(config.text_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.FloatTensor:
        """Projected (not normalised) text features `(B, projection_dim)`."""
        text_outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        return self.text_projection(text_outputs.pooler_output)

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.FloatTensor:
        """Projected (not normalised) image features `(B, projection_dim)`."""
        vision_outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        return self.visual_projection(vision_outputs.pooler_output)

    def temperature(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100 as in CLIP so the softmax cannot collapse onto one pair."""
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

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
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if input_ids is None or pixel_values is None:
            raise ValueError("FlorenceModel.forward needs both input_ids and pixel_values")
        kwargs.pop("token_type_ids", None)
        return_loss = return_loss if return_loss is not None else labels is not None
        if return_loss:
            if input_ids.shape[0] != pixel_values.shape[0]:
                raise ValueError(
                    f"The UniCL loss needs image-text pairs, but got {pixel_values.shape[0]} images and "
                    f"{input_ids.shape[0]} texts"
                )
            if labels is not None and labels.shape != (input_ids.shape[0],):
                raise ValueError(
                    f"labels must have shape ({input_ids.shape[0]},): one int64 UniCL label per image-text pair, "
                    f"got {tuple(labels.shape)}"
                )

        vision_outputs = self.vision_model(
            pixel_values=pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        text_outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        image_embeds = F.normalize(self.visual_projection(vision_outputs.pooler_output), dim=-1)
        text_embeds = F.normalize(self.text_projection(text_outputs.pooler_output), dim=-1)
        scale = self.temperature()

        # Distributed: compare this process's rows with the whole global batch, gathered with gradients, so N
        # processes of b pairs give the loss and gradients of one process with N * b.
        all_image_embeds = gather_with_grad(image_embeds)
        all_text_embeds = gather_with_grad(text_embeds)
        logits_per_image = scale * image_embeds @ all_text_embeds.t()
        logits_per_text = scale * text_embeds @ all_image_embeds.t()

        loss = None
        if return_loss:
            if labels is None:
                world_size, rank = _distributed_world()
                batch = input_ids.shape[0]
                labels = torch.arange(batch, device=input_ids.device) + rank * batch
                all_labels = torch.arange(batch * world_size, device=input_ids.device)
            else:
                all_labels = gather_no_grad(labels)
            loss = unicl_loss(logits_per_image, all_labels, logits_per_text, row_labels=labels)

        output = FlorenceOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["FlorenceModel", "FlorenceOutput", "FlorencePreTrainedModel", "FlorenceTextModel", "unicl_loss"]
