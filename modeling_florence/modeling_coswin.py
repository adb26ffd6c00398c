# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""CoSwin, Florence's image encoder: a Swin Transformer with CvT convolutional embeddings.

Tokens stay in channels-last `(B, H, W, C)` layout inside the stages, as in timm, so window partitioning is a view
and a permute. With `patch_embed="linear"` and `downsample="merge"` the network is exactly Swin (timm, official and
Transformers' `SwinModel` weights load through `conversion/convert_swin.py` and reproduce their outputs).

Any input resolution runs on one instance: feature maps that are not window multiples are zero-padded (after the
first LayerNorm, before the cyclic shift, as the official detection Swin does), and a stage whose map is no larger
than the window along one axis uses a window of the map's size there and no shift along it (timm's rule). The
relative-position bias of such a smaller window is the exact sub-table of the learned one.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_florence import FlorenceVisionConfig

logger = logging.get_logger(__name__)

# Value added to attention logits between tokens of different regions of a shifted window; the one Swin uses, kept
# so masked softmax weights equal the peers' to the last bit.
SHIFTED_WINDOW_MASK_VALUE = -100.0


@dataclass
class FlorenceVisionModelOutput(BaseModelOutputWithPooling):
    """
    Output of [`FlorenceVisionModel`]: Transformers' `BaseModelOutputWithPooling` plus the per-stage maps.

    Args:
        last_hidden_state: `(B, L, C)` tokens of the last stage after the final LayerNorm.
        pooler_output: `(B, C)` global average of `last_hidden_state` (the image feature).
        hidden_states: with `output_hidden_states=True`, `(B, L_i, C_i)` tokens after the embedding and each stage;
            these are the tensors the network computes with, so gradients flow to them.
        attentions: with `output_attentions=True` (eager attention), per-block `(B * windows, heads, N, N)` weights.
        feature_maps: per-stage `(B, C_i, H_i, W_i)` maps (before the final LayerNorm) for dense heads.
    """

    feature_maps: tuple[torch.FloatTensor, ...] | None = None


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for whole samples, rescaling the kept ones."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
    return hidden_states * keep / keep_prob


class FlorenceDropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class FlorenceVisionConvEmbeddings(nn.Module):
    """CoSwin's patch embedding: CvT's overlapping convolution (kernel `2 * patch - 1`, stride `patch`), then LN."""

    def __init__(self, config: FlorenceVisionConfig):
        super().__init__()
        kernel = 2 * config.patch_size - 1
        padding = (kernel - config.patch_size + 1) // 2
        self.projection = nn.Conv2d(config.num_channels, config.embed_dim, kernel, config.patch_size, padding)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.norm(self.projection(pixel_values).permute(0, 2, 3, 1))


class FlorenceVisionPatchEmbeddings(nn.Module):
    """Swin's patch embedding: non-overlapping `patch x patch` patches (right/bottom zero padding), then LN."""

    def __init__(self, config: FlorenceVisionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(config.num_channels, config.embed_dim, config.patch_size, config.patch_size)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        pad_h, pad_w = (-height) % self.patch_size, (-width) % self.patch_size
        if pad_h or pad_w:
            pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))
        return self.norm(self.projection(pixel_values).permute(0, 2, 3, 1))


class FlorenceVisionConvDownsample(nn.Module):
    """CoSwin's downsampling between stages: CvT 3x3 stride-2 convolution doubling the width, then LN."""

    def __init__(self, config: FlorenceVisionConfig, dim: int):
        super().__init__()
        self.projection = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(2 * dim, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.projection(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(hidden_states)


class FlorenceVisionPatchMerging(nn.Module):
    """Swin's patch merging: concatenate each 2x2 neighbourhood (odd sizes zero-padded), LN, bias-free linear."""

    def __init__(self, config: FlorenceVisionConfig, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=config.layer_norm_eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = hidden_states.shape
        if height % 2 or width % 2:
            hidden_states = F.pad(hidden_states, (0, 0, 0, width % 2, 0, height % 2))
            height, width = height + height % 2, width + width % 2
        # (B, H/2, 2[h], W/2, 2[w], C) -> (B, H/2, W/2, 2[w], 2[h], C): Swin's order x00, x10, x01, x11.
        hidden_states = hidden_states.reshape(batch, height // 2, 2, width // 2, 2, channels)
        hidden_states = hidden_states.permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(hidden_states))


# The variants a config selects, chosen once at construction.
PATCH_EMBEDDINGS = {"conv": FlorenceVisionConvEmbeddings, "linear": FlorenceVisionPatchEmbeddings}
DOWNSAMPLERS = {"conv": FlorenceVisionConvDownsample, "merge": FlorenceVisionPatchMerging}


def window_partition(hidden_states: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """`(B, H, W, C)` with H, W multiples of the window -> `(B * windows, wh * ww, C)`."""
    batch, height, width, channels = hidden_states.shape
    wh, ww = window
    hidden_states = hidden_states.view(batch, height // wh, wh, width // ww, ww, channels)
    return hidden_states.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, channels)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    wh, ww = window
    channels = windows.shape[-1]
    windows = windows.view(-1, height // wh, width // ww, wh, ww, channels)
    return windows.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window: tuple[int, int], table_window: int, device=None) -> torch.Tensor:
    """Index into a `(2 * table_window - 1) ** 2` bias table for every token pair of a `window` (<= table_window)."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window[0], device=device), torch.arange(window[1], device=device), indexing="ij")
    ).flatten(1)
    relative = coords[:, :, None] - coords[:, None, :] + (table_window - 1)
    return relative[0] * (2 * table_window - 1) + relative[1]


def shifted_window_mask(
    padded_size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device, dtype
) -> torch.Tensor:
    """`(windows, N, N)` additive mask keeping attention inside the regions a cyclic shift brought together."""
    region = torch.zeros(padded_size, device=device, dtype=torch.int32)
    count = 0
    for h_slice in (slice(0, -window[0]), slice(-window[0], -shift[0] or None), slice(-shift[0] or None, None)):
        for w_slice in (slice(0, -window[1]), slice(-window[1], -shift[1] or None), slice(-shift[1] or None, None)):
            region[h_slice, w_slice] = count
            count += 1
    region_windows = window_partition(region[None, :, :, None], window).squeeze(-1)
    different = region_windows[:, None, :] != region_windows[:, :, None]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill_(different, SHIFTED_WINDOW_MASK_VALUE)


def attention_function(config, output_attentions: bool = False) -> Callable:
    """The configured attention kernel, or the eager reference for a call that asks for attention weights (fused
    kernels do not return them): such a call gets real weights, and the same outputs."""
    if output_attentions and config._attn_implementation != "eager":
        logger.warning_once(
            f"output_attentions=True runs the eager attention (the {config._attn_implementation!r} kernel returns no "
            "weights); load the model with attn_implementation=\"eager\" to make that the default"
        )
        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention: softmax(q k^T * scale + mask) v. Returns `(B, L, heads, D)` and the weights."""
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def window_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor,
    shift_mask: torch.Tensor | None = None,
    output_attentions: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head attention inside windows, for 2-D and 3-D windows alike: softmax(q k^T * scale + bias + mask) v.

    `query`, `key`, `value`: `(B * windows, heads, N, D)`, windows ordered clip-major; `bias`: the `(heads, N, N)`
    relative-position bias; `shift_mask`: the `(windows, N, N)` additive shifted-window mask or None. Returns
    `(B * windows, N, heads, D)` and, when `output_attentions`, the `(B * windows, heads, N, N)` weights.

    The bias and the mask are one `(windows | 1, heads, N, N)` additive mask, never repeated for every clip of the
    batch: the eager path adds it by broadcasting, and on CPU a kernel (`sdpa`, ...) takes it clip by clip, where
    repeating it would write and, in training, reduce `B` copies of the largest tensor of the block. On accelerators
    one kernel call over the repeated mask is kept (a launch per clip costs more there)."""
    windows_total, heads, tokens, _ = query.shape
    dropout = module.dropout if module.training else 0.0
    mask = bias.unsqueeze(0) if shift_mask is None else bias.unsqueeze(0) + shift_mask.unsqueeze(1)
    implementation = module.config._attn_implementation
    if output_attentions and implementation != "eager":
        logger.warning_once(
            f"output_attentions=True runs the eager attention (the {implementation!r} kernel returns no weights); "
            "load the model with attn_implementation=\"eager\" to make that the default"
        )
    if output_attentions or implementation == "eager":
        scores = torch.matmul(query * module.scaling, key.transpose(-1, -2))
        scores = (scores.view(-1, mask.shape[0], heads, tokens, tokens) + mask).view(windows_total, heads, tokens, tokens)
        weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        weights = F.dropout(weights, p=dropout, training=module.training)
        attn_output = torch.matmul(weights, value).transpose(1, 2).contiguous()
        return attn_output, weights if output_attentions else None

    interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    windows = mask.shape[0]
    if windows == 1 or windows == windows_total:  # broadcasts as it is
        return interface(module, query, key, value, mask, scaling=module.scaling, dropout=dropout, is_causal=False,
                         **kwargs)
    if query.device.type != "cpu":
        mask = mask.unsqueeze(0).expand(windows_total // windows, -1, -1, -1, -1).flatten(0, 1)
        return interface(module, query, key, value, mask, scaling=module.scaling, dropout=dropout, is_causal=False,
                         **kwargs)
    outputs = [
        interface(module, clip_query, clip_key, clip_value, mask, scaling=module.scaling, dropout=dropout,
                  is_causal=False, **kwargs)[0]
        for clip_query, clip_key, clip_value in zip(query.split(windows), key.split(windows), value.split(windows))
    ]
    return torch.cat(outputs), None


class FlorenceWindowAttentionBase(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias per head, shared by the 2-D
    CoSwin and Video CoSwin: a subclass sets the bias table's size and says how a window reads it
    (`relative_position_bias`). Runs through :func:`window_attention`."""

    def __init__(self, config, dim: int, num_heads: int, table_rows: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows, num_heads))
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def relative_position_bias(self, window: tuple[int, ...]) -> torch.Tensor:
        """`(heads, N, N)` bias of a window."""
        raise NotImplementedError

    def gather_bias(self, index: torch.Tensor, tokens: int) -> torch.Tensor:
        """`(heads, N, N)` rows of the bias table at an `(N, N)` index."""
        bias = self.relative_position_bias_table[index.reshape(-1)].view(tokens, tokens, self.num_heads)
        return bias.permute(2, 0, 1)

    def forward(
        self,
        windows: torch.Tensor,
        window: tuple[int, ...],
        shift_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        num_windows_total, tokens, channels = windows.shape
        qkv = self.qkv(windows).view(num_windows_total, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias(window).to(query.dtype)
        attn_output, attn_weights = window_attention(
            self, query, key, value, bias, shift_mask, output_attentions=output_attentions, **kwargs
        )
        attn_output = self.proj_dropout(self.proj(attn_output.reshape(num_windows_total, tokens, channels)))
        return attn_output, attn_weights


class FlorenceVisionWindowAttention(FlorenceWindowAttentionBase):
    """CoSwin's window attention: square windows, a `(2W-1)^2`-row bias table."""

    def __init__(self, config: FlorenceVisionConfig, dim: int, num_heads: int):
        super().__init__(config, dim, num_heads, (2 * config.window_size - 1) ** 2)
        self.window_size = config.window_size
        full = (self.window_size, self.window_size)
        self.register_buffer(
            "relative_position_index", relative_position_index(full, self.window_size), persistent=False
        )

    def relative_position_bias(self, window: tuple[int, int]) -> torch.Tensor:
        """`(heads, N, N)` bias for a window; a window smaller than the configured one reads its exact sub-table."""
        if window == (self.window_size, self.window_size):
            index = self.relative_position_index
        else:
            index = relative_position_index(window, self.window_size, device=self.relative_position_bias_table.device)
        return self.gather_bias(index, window[0] * window[1])


class FlorenceVisionMLP(nn.Module):
    def __init__(self, config: FlorenceVisionConfig, dim: int):
        super().__init__()
        hidden = int(dim * config.mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.activation_fn(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden_states))


class FlorenceVisionLayer(GradientCheckpointingLayer):
    """One Swin block: (shifted-)window attention and an MLP, each pre-LN with a residual and stochastic depth."""

    def __init__(self, config: FlorenceVisionConfig, dim: int, num_heads: int, shifted: bool, drop_path_rate: float):
        super().__init__()
        self.window_size = config.window_size
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = FlorenceVisionWindowAttention(config, dim, num_heads)
        self.drop_path = FlorenceDropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = FlorenceVisionMLP(config, dim)

    def window_and_shift(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Per axis: a map no larger than the window gets a window of its own size and no shift (timm's rule)."""
        window = (min(height, self.window_size), min(width, self.window_size))
        shift = tuple(
            self.window_size // 2 if self.shifted and size > self.window_size else 0 for size in (height, width)
        )
        return window, shift

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False, **kwargs):
        batch, height, width, channels = hidden_states.shape
        window, shift = self.window_and_shift(height, width)
        shortcut = hidden_states
        hidden_states = self.norm1(hidden_states)

        pad_h, pad_w = (-height) % window[0], (-width) % window[1]
        if pad_h or pad_w:
            hidden_states = F.pad(hidden_states, (0, 0, 0, pad_w, 0, pad_h))
        padded_size = (height + pad_h, width + pad_w)
        has_shift = shift != (0, 0)
        if has_shift:
            hidden_states = torch.roll(hidden_states, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            # Built from shapes only (no cache keyed on them), so tracing and torch.export see plain tensor ops.
            mask = shifted_window_mask(padded_size, window, shift, hidden_states.device, hidden_states.dtype)
        else:
            mask = None

        windows = window_partition(hidden_states, window)
        attn_windows, attn_weights = self.attn(windows, window, mask, output_attentions=output_attentions, **kwargs)
        hidden_states = window_reverse(attn_windows, window, *padded_size)
        if has_shift:
            hidden_states = torch.roll(hidden_states, shifts=shift, dims=(1, 2))
        if pad_h or pad_w:
            hidden_states = hidden_states[:, :height, :width, :]

        hidden_states = shortcut + self.drop_path(hidden_states)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        return (hidden_states, attn_weights) if output_attentions else (hidden_states,)


class FlorenceStageBase(nn.Module):
    """A stage's forward, shared by the 2-D CoSwin and Video CoSwin: `downsample` (None in the first stage), then the
    `blocks`, collecting their attention weights when asked."""

    downsample: nn.Module | None
    blocks: nn.ModuleList

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False, **kwargs):
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        attentions = ()
        for block in self.blocks:
            outputs = block(hidden_states, output_attentions=output_attentions, **kwargs)
            hidden_states = outputs[0]
            if output_attentions:
                attentions += (outputs[1],)
        return hidden_states, attentions


class FlorenceVisionStage(FlorenceStageBase):
    """Optional downsampling (every stage but the first) followed by blocks alternating plain and shifted windows."""

    def __init__(self, config: FlorenceVisionConfig, stage: int, drop_path_rates: list[float]):
        super().__init__()
        dim = config.stage_dims[stage]
        self.downsample = DOWNSAMPLERS[config.downsample](config, dim // 2) if stage > 0 else None
        self.blocks = nn.ModuleList(
            FlorenceVisionLayer(config, dim, config.num_heads[stage], shifted=index % 2 == 1, drop_path_rate=rate)
            for index, rate in enumerate(drop_path_rates)
        )



class FlorenceVisionPreTrainedModel(PreTrainedModel):
    config_class = FlorenceVisionConfig
    # The attribute that holds the encoder in every model built on it (FlorenceModel, the backbone, the adapters), so
    # a tower loads from any of their folders and they load from a CoSwin folder (Transformers adds or strips it).
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["FlorenceVisionLayer", "FlorenceVisionConvDownsample", "FlorenceVisionPatchMerging"]
    # Weights of the other parts of a composite folder, which this tower leaves behind without a warning.
    _keys_to_ignore_on_load_unexpected = [
        r"^text_model\.",
        r"^text_projection\.",
        r"^visual_projection\.",
        r"^logit_scale$",
        r"^hidden_states_norms\.",
    ]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        """Swin's init: truncated normal(0.02) for weights and the bias table, zeros for biases, LN at identity."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, FlorenceVisionWindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=std)
            init.copy_(
                module.relative_position_index,
                relative_position_index((module.window_size, module.window_size), module.window_size),
            )


def resolve_output_flags(config, output_hidden_states, output_attentions, return_dict) -> tuple[bool, bool, bool]:
    """Per-call output flags, falling back to the config's defaults (the Transformers convention)."""
    return (
        config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        config.output_attentions if output_attentions is None else output_attentions,
        config.return_dict if return_dict is None else return_dict,
    )


def _check_pixel_values(config: FlorenceVisionConfig, pixel_values: torch.Tensor) -> None:
    """Clear errors for the inputs a window transformer cannot process (shapes only: nothing data-dependent)."""
    if pixel_values is None:
        raise ValueError("pixel_values is required")
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must have shape (batch, {config.num_channels}, height, width), got {tuple(pixel_values.shape)}"
        )
    if pixel_values.shape[0] == 0:
        raise ValueError(f"pixel_values is an empty batch (shape {tuple(pixel_values.shape)}): pass at least one image")
    if pixel_values.shape[1] != config.num_channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[1]} channels but the model expects {config.num_channels} "
            f"(shape {tuple(pixel_values.shape)}; channels come second: (batch, channels, height, width))"
        )
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values must be a floating-point tensor (normalised pixels, as the Florence image processor returns), "
            f"got dtype {pixel_values.dtype}"
        )
    minimum = config.patch_size * config.window_size
    height, width = pixel_values.shape[-2:]
    if height < minimum or width < minimum:
        raise ValueError(
            f"Image of {height}x{width} pixels is smaller than one attention window after the patch embedding: this "
            f"model (patch_size={config.patch_size}, window_size={config.window_size}) needs at least "
            f"{minimum}x{minimum} pixels"
        )


def record_tokens(hidden_states: torch.Tensor, all_hidden_states: tuple | None) -> tuple[torch.Tensor, tuple | None]:
    """Append the `(B, L, C)` tokens of a channels-last map (`(B, H, W, C)`, or `(B, T, H, W, C)` for video) to
    `all_hidden_states` and continue from that very tensor, so the recorded hidden state is part of the graph (its
    gradient is the one the network sees)."""
    if all_hidden_states is None:
        return hidden_states, None
    tokens = hidden_states.flatten(1, -2)
    return tokens.unflatten(1, hidden_states.shape[1:-1]), all_hidden_states + (tokens,)


class FlorenceVisionModel(FlorenceVisionPreTrainedModel):
    """The CoSwin encoder: patch embedding, stages of (shifted-)window blocks, final LayerNorm, average pooling."""

    def __init__(self, config: FlorenceVisionConfig):
        super().__init__(config)
        config.check_head_widths()
        self.embeddings = PATCH_EMBEDDINGS[config.patch_embed](config)
        total = sum(config.depths)  # stochastic depth grows linearly over all blocks (plain Python: meta-device safe)
        rates = [config.drop_path_rate * index / max(total - 1, 1) for index in range(total)]
        starts = [sum(config.depths[:stage]) for stage in range(len(config.depths))]
        self.stages = nn.ModuleList(
            FlorenceVisionStage(config, stage, rates[start : start + depth])
            for stage, (start, depth) in enumerate(zip(starts, config.depths))
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> FlorenceVisionModelOutput | tuple:
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        _check_pixel_values(self.config, pixel_values)
        # As CLIP: inputs follow the model's dtype (fp32 pixels into a bf16 model).
        pixel_values = pixel_values.to(self.embeddings.projection.weight.dtype)

        hidden_states, all_hidden_states = record_tokens(self.embeddings(pixel_values), () if output_hidden_states else None)
        all_attentions = () if output_attentions else None
        feature_maps = ()
        for stage in self.stages:
            hidden_states, attentions = stage(hidden_states, output_attentions=output_attentions, **kwargs)
            hidden_states, all_hidden_states = record_tokens(hidden_states, all_hidden_states)
            feature_maps += (hidden_states.permute(0, 3, 1, 2),)
            if output_attentions:
                all_attentions += attentions

        last_hidden_state = self.layernorm(hidden_states.flatten(1, 2))
        pooled_output = last_hidden_state.mean(dim=1)
        output = FlorenceVisionModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            feature_maps=feature_maps,
        )
        return output if return_dict else output.to_tuple()


class FlorenceVisionBackbone(BackboneMixin, FlorenceVisionPreTrainedModel):
    """CoSwin as a Transformers backbone: `(B, C, H, W)` maps of `out_features`, each with its own LayerNorm.

    The per-stage norms follow the Swin detection backbones (and Transformers' `SwinBackbone`): dense heads read
    normalised maps of every stage, not only of the last. The encoder sits in `vision_model`, as in `FlorenceModel`,
    so `from_pretrained` reads the image tower of a CoSwin folder, a two-tower Florence folder or a backbone folder.
    """

    def __init__(self, config: FlorenceVisionConfig):
        super().__init__(config)
        self.vision_model = FlorenceVisionModel(config)
        self.num_features = [config.embed_dim] + config.stage_dims
        self.hidden_states_norms = nn.ModuleDict(
            {
                stage: nn.LayerNorm(channels, eps=config.layer_norm_eps)
                for stage, channels in zip(self.out_features, self.channels)
            }
        )
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Also from a two-tower folder: `AutoBackbone` hands over the folder's `FlorenceConfig`; the backbone takes
        its `vision_config`, with the `out_features` / `out_indices` asked for."""
        if config is not None and hasattr(config, "vision_config"):
            backbone_kwargs = {key: kwargs.pop(key) for key in ("out_features", "out_indices") if key in kwargs}
            config = FlorenceVisionConfig.from_dict(config.vision_config.to_dict(), **backbone_kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.get_input_embeddings()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        outputs = self.vision_model(
            pixel_values, output_hidden_states=True, output_attentions=output_attentions, return_dict=True, **kwargs
        )
        stem = outputs.hidden_states[0]
        height, width = outputs.feature_maps[0].shape[-2:]
        maps = {"stem": stem.unflatten(1, (height, width))}
        maps.update({name: fm.permute(0, 2, 3, 1) for name, fm in zip(self.stage_names[1:], outputs.feature_maps)})
        feature_maps = tuple(
            self.hidden_states_norms[name](maps[name]).permute(0, 3, 1, 2).contiguous() for name in self.out_features
        )
        output = BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "FlorenceVisionBackbone",
    "FlorenceVisionModel",
    "FlorenceVisionModelOutput",
    "FlorenceVisionPreTrainedModel",
]
