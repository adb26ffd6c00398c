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

import itertools
import math
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
    """Swin's patch merging: concatenate each 2x2 neighbourhood (odd sizes zero-padded), LN, bias-free linear.

    Works on `(B, H, W, C)` and, frame by frame, on `(B, T, H, W, C)` (Video Swin's merging)."""

    def __init__(self, config: FlorenceVisionConfig, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=config.layer_norm_eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        *leading, height, width, channels = hidden_states.shape
        if height % 2 or width % 2:
            hidden_states = F.pad(hidden_states, (0, 0, 0, width % 2, 0, height % 2))
            height, width = height + height % 2, width + width % 2
        # (..., H/2, 2[h], W/2, 2[w], C) -> (..., H/2, W/2, 2[w], 2[h], C): Swin's order x00, x10, x01, x11.
        hidden_states = hidden_states.reshape(*leading, height // 2, 2, width // 2, 2, channels)
        hidden_states = hidden_states.movedim(-4, -2).flatten(-3)
        return self.reduction(self.norm(hidden_states))


# The variants a config selects, chosen once at construction.
PATCH_EMBEDDINGS = {"conv": FlorenceVisionConvEmbeddings, "linear": FlorenceVisionPatchEmbeddings}
DOWNSAMPLERS = {"conv": FlorenceVisionConvDownsample, "merge": FlorenceVisionPatchMerging}


def window_partition(hidden_states: torch.Tensor, window: tuple[int, ...]) -> torch.Tensor:
    """`(B, *size, C)` with every size a multiple of the window -> `(B * windows, prod(window), C)`: 2-D `(B, H, W, C)`
    or 3-D `(B, T, H, W, C)` from the length of the window tuple; windows are ordered row-major, clip-major."""
    batch, *size, channels = hidden_states.shape
    axes = len(window)
    hidden_states = hidden_states.view(batch, *(d for extent, w in zip(size, window) for d in (extent // w, w)), channels)
    order = (0, *range(1, 2 * axes, 2), *range(2, 2 * axes + 1, 2), 2 * axes + 1)
    return hidden_states.permute(order).reshape(-1, math.prod(window), channels)


def window_reverse(windows: torch.Tensor, window: tuple[int, ...], *size: int) -> torch.Tensor:
    """Inverse of :func:`window_partition` for a padded map of `size` (`height, width` or `time, height, width`)."""
    axes, channels = len(window), windows.shape[-1]
    windows = windows.view(-1, *(extent // w for extent, w in zip(size, window)), *window, channels)
    order = (0, *(d for axis in range(axes) for d in (1 + axis, 1 + axes + axis)), 2 * axes + 1)
    return windows.permute(order).reshape(-1, *size, channels)


def relative_position_index(window: tuple[int, ...], table_window, device=None) -> torch.Tensor:
    """`(N, N)` index into a `prod(2 * table_window - 1)`-row bias table for every token pair of a `window` (each axis
    <= the table's). Row-major over the offsets: in 3-D `dt * (2Wh-1)(2Ww-1) + dh * (2Ww-1) + dw`, each offset
    shifted to start at 0. `table_window` is a tuple, or an int for a square / cubic table."""
    table = (table_window,) * len(window) if isinstance(table_window, int) else tuple(table_window)
    coords = torch.stack(
        torch.meshgrid(*(torch.arange(extent, device=device) for extent in window), indexing="ij")
    ).flatten(1)
    relative = coords[:, :, None] - coords[:, None, :]
    index = torch.zeros_like(relative[0])
    for axis, extent in enumerate(table):
        index = index * (2 * extent - 1) + relative[axis] + (extent - 1)
    return index


def subtable_index(window: tuple[int, ...], table_window: tuple[int, ...], full_index: torch.Tensor) -> torch.Tensor:
    """Index of a shrunk window: the exact relative offsets of its token pairs (CoSwin's rule in 2-D and 3-D)."""
    return relative_position_index(window, table_window, device=full_index.device)


def truncated_index(window: tuple[int, ...], table_window: tuple[int, ...], full_index: torch.Tensor) -> torch.Tensor:
    """Index of a shrunk window as Video Swin and torchvision take it: the first `N` rows and columns of the full
    window's index. Equal to :func:`subtable_index` when only the leading (temporal) window shrinks."""
    tokens = math.prod(window)
    return full_index[:tokens, :tokens]


# How a window smaller than the configured one reads the bias table (FlorenceVideoVisionConfig.window_bias).
WINDOW_BIAS_INDEX = {"subtable": subtable_index, "truncated": truncated_index}


def shifted_window_mask(
    padded_size: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], device, dtype
) -> torch.Tensor:
    """`(windows, N, N)` additive mask keeping attention inside the regions a cyclic shift brought together (2-D or
    3-D: each axis is cut into the three regions `[0, -window)`, `[-window, -shift)`, `[-shift, end)`)."""
    region = torch.zeros(padded_size, device=device, dtype=torch.int32)
    axis_slices = [
        (slice(0, -size), slice(-size, -step or None), slice(-step or None, None)) for size, step in zip(window, shift)
    ]
    for count, slices in enumerate(itertools.product(*axis_slices)):
        region[slices] = count
    region_windows = window_partition(region[None, ..., None], window).squeeze(-1)
    different = region_windows[:, None, :] != region_windows[:, :, None]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill_(different, SHIFTED_WINDOW_MASK_VALUE)


def is_tracing() -> bool:
    """Whether the call runs under `torch.compile`, `torch.export` or TorchScript tracing (no Python caches then)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


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
    """Multi-head self-attention inside 2-D or 3-D windows with a learned relative-position bias per head, shared by
    CoSwin and Video CoSwin: a `prod(2 * window_size - 1)`-row bias table; a window smaller than `window_size` (a
    small feature map) reads it through `shrunk_window_index` (:data:`WINDOW_BIAS_INDEX`). Runs through
    :func:`window_attention`."""

    def __init__(self, config, dim: int, num_heads: int, window_size: tuple[int, ...], shrunk_window_index: Callable):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.window_size = tuple(window_size)
        self.shrunk_window_index = shrunk_window_index
        rows = math.prod(2 * size - 1 for size in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer(
            "relative_position_index", relative_position_index(self.window_size, self.window_size), persistent=False
        )

    def relative_position_bias(self, window: tuple[int, ...]) -> torch.Tensor:
        """`(heads, N, N)` bias for a window (the configured one, or one shrunk to a small feature map)."""
        if window == self.window_size:
            index = self.relative_position_index
        else:
            index = self.shrunk_window_index(window, self.window_size, self.relative_position_index)
        return self.gather_bias(index, math.prod(window))

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
    """CoSwin's window attention: square windows, a `(2W-1)^2`-row bias table; a smaller window reads its exact
    sub-table."""

    def __init__(self, config: FlorenceVisionConfig, dim: int, num_heads: int):
        super().__init__(config, dim, num_heads, (config.window_size, config.window_size), subtable_index)


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


class FlorenceWindowLayer(GradientCheckpointingLayer):
    """One Swin block over 2-D `(B, H, W, C)` or 3-D `(B, T, H, W, C)` maps: (shifted-)window attention and an MLP,
    each pre-LN with a residual and stochastic depth. The forward is norm, pad, roll, partition, attention, reverse,
    unroll, crop; the 2-D and the 3-D blocks differ only in their attention module and window tuple.

    Mask policy: the shifted-window mask depends on shapes only; in eager mode it is built once per (padded size,
    window, shift, device, dtype) and kept (one entry: the last shape seen); under `torch.compile` / `torch.export` /
    tracing it is built in the graph from those shapes, so nothing is cached across traced calls."""

    def __init__(self, config, dim: int, attention: FlorenceWindowAttentionBase, shifted: bool, drop_path_rate: float):
        super().__init__()
        self.window_size = attention.window_size
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = attention
        self.drop_path = FlorenceDropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = FlorenceVisionMLP(config, dim)
        self._mask_cache: dict = {}

    def window_and_shift(self, *size) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per axis of a map of `size` (a tuple, or the extents as arguments): a map no larger than the window gets a
        window of its own size and no shift (timm's and Video Swin's rule)."""
        size = tuple(size[0]) if len(size) == 1 else size
        window = tuple(min(extent, limit) for extent, limit in zip(size, self.window_size))
        shift = tuple(
            limit // 2 if self.shifted and extent > limit else 0 for extent, limit in zip(size, self.window_size)
        )
        return window, shift

    def shift_mask(self, padded_size, window, shift, device, dtype) -> torch.Tensor:
        """The `(windows, N, N)` shifted-window mask, cached in eager mode (see the class docstring)."""
        if is_tracing():
            return shifted_window_mask(padded_size, window, shift, device, dtype)
        key = (padded_size, window, shift, device, dtype)
        if key not in self._mask_cache:
            self._mask_cache.clear()
            self._mask_cache[key] = shifted_window_mask(padded_size, window, shift, device, dtype)
        return self._mask_cache[key]

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False, **kwargs):
        size = tuple(hidden_states.shape[1:-1])
        window, shift = self.window_and_shift(size)
        axes = tuple(range(1, len(size) + 1))
        shortcut = hidden_states
        hidden_states = self.norm1(hidden_states)

        pads = tuple((-extent) % limit for extent, limit in zip(size, window))
        if any(pads):
            hidden_states = F.pad(hidden_states, (0, 0) + tuple(p for pad in reversed(pads) for p in (0, pad)))
        padded_size = tuple(extent + pad for extent, pad in zip(size, pads))
        mask = None
        if any(shift):
            hidden_states = torch.roll(hidden_states, shifts=tuple(-step for step in shift), dims=axes)
            mask = self.shift_mask(padded_size, window, shift, hidden_states.device, hidden_states.dtype)

        windows = window_partition(hidden_states, window)
        attn_windows, attn_weights = self.attn(windows, window, mask, output_attentions=output_attentions, **kwargs)
        hidden_states = window_reverse(attn_windows, window, *padded_size)
        if any(shift):
            hidden_states = torch.roll(hidden_states, shifts=shift, dims=axes)
        if any(pads):
            hidden_states = hidden_states[(slice(None), *(slice(0, extent) for extent in size))]

        hidden_states = shortcut + self.drop_path(hidden_states)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        return (hidden_states, attn_weights) if output_attentions else (hidden_states,)


class FlorenceVisionLayer(FlorenceWindowLayer):
    """One CoSwin block: :class:`FlorenceWindowLayer` over 2-D maps with square windows."""

    def __init__(self, config: FlorenceVisionConfig, dim: int, num_heads: int, shifted: bool, drop_path_rate: float):
        super().__init__(config, dim, FlorenceVisionWindowAttention(config, dim, num_heads), shifted, drop_path_rate)


class FlorenceStageBase(nn.Module):
    """A stage of either tower: `downsample` (None in the first stage), then the `blocks`, collecting their attention
    weights when asked. A subclass says how to build a block (`make_block`) and which downsamplers the config picks
    from (`downsamplers`)."""

    downsamplers: dict[str, type[nn.Module]] = {}

    def __init__(self, config, stage: int, drop_path_rates: list[float]):
        super().__init__()
        dim = config.stage_dims[stage]
        self.downsample = self.downsamplers[config.downsample](config, dim // 2) if stage > 0 else None
        self.blocks = nn.ModuleList(
            self.make_block(config, stage, dim, shifted=index % 2 == 1, drop_path_rate=rate)
            for index, rate in enumerate(drop_path_rates)
        )

    def make_block(self, config, stage: int, dim: int, shifted: bool, drop_path_rate: float) -> nn.Module:
        raise NotImplementedError

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

    downsamplers = DOWNSAMPLERS

    def make_block(self, config, stage, dim, shifted, drop_path_rate):
        return FlorenceVisionLayer(config, dim, config.num_heads[stage], shifted=shifted, drop_path_rate=drop_path_rate)


def build_stages(config, stage_class: type[FlorenceStageBase]) -> nn.ModuleList:
    """The stages of a tower, stochastic depth growing linearly over all blocks (plain Python: meta-device safe)."""
    total = sum(config.depths)
    rates = [config.drop_path_rate * index / max(total - 1, 1) for index in range(total)]
    starts = [sum(config.depths[:stage]) for stage in range(len(config.depths))]
    return nn.ModuleList(
        stage_class(config, stage, rates[start : start + depth])
        for stage, (start, depth) in enumerate(zip(starts, config.depths))
    )


def init_linear_or_layer_norm(module: nn.Module, std: float) -> bool:
    """BERT's / CLIP's init of one module: normal(std) weights and zero biases for a Linear or an Embedding, a
    LayerNorm at identity. Returns whether `module` was one of those (the caller then handles its own modules)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        init.normal_(module.weight, std=std)
        if getattr(module, "bias", None) is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    else:
        return False
    return True


class FlorencePreTrainedBase(PreTrainedModel):
    """What every Florence `PreTrainedModel` declares, in one place: gradient checkpointing, and attention through
    Transformers' kernels (eager, `sdpa`, the attention-backend registry; no flash / flex attention)."""

    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True


class FlorenceWindowPreTrainedModel(FlorencePreTrainedBase):
    """What CoSwin and Video CoSwin share as `PreTrainedModel`s: Swin's init and the encoder loop over `self.stages`
    (then `self.layernorm` and average pooling)."""


    @torch.no_grad()
    def _init_weights(self, module):
        """Swin's init: truncated normal(0.02) for weights and the bias table, zeros for biases, LN at identity."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, FlorenceWindowAttentionBase):
            init.trunc_normal_(module.relative_position_bias_table, std=std)
            init.copy_(module.relative_position_index, relative_position_index(module.window_size, module.window_size))

    def encode_stages(self, hidden_states: torch.Tensor, output_hidden_states: bool, output_attentions: bool, **kwargs):
        """The encoder loop from the embedded channels-last map: the fields of the tower's output (last hidden state
        after the final LayerNorm, its average, channels-first per-stage maps, hidden states, attentions)."""
        hidden_states, all_hidden_states = record_tokens(hidden_states, () if output_hidden_states else None)
        all_attentions = () if output_attentions else None
        feature_maps = ()
        for stage in self.stages:
            hidden_states, attentions = stage(hidden_states, output_attentions=output_attentions, **kwargs)
            hidden_states, all_hidden_states = record_tokens(hidden_states, all_hidden_states)
            feature_maps += (hidden_states.movedim(-1, 1),)
            if output_attentions:
                all_attentions += attentions
        last_hidden_state = self.layernorm(hidden_states.flatten(1, -2))
        return {
            "last_hidden_state": last_hidden_state,
            "pooler_output": last_hidden_state.mean(dim=1),
            "hidden_states": all_hidden_states,
            "attentions": all_attentions,
            "feature_maps": feature_maps,
        }


class FlorenceVisionPreTrainedModel(FlorenceWindowPreTrainedModel):
    config_class = FlorenceVisionConfig
    # The attribute that holds the encoder in every model built on it (FlorenceModel, the backbone, the adapters), so
    # a tower loads from any of their folders and they load from a CoSwin folder (Transformers adds or strips it).
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["FlorenceVisionLayer", "FlorenceVisionConvDownsample", "FlorenceVisionPatchMerging"]
    # Weights of the other parts of a composite folder, which this tower leaves behind without a warning.
    _keys_to_ignore_on_load_unexpected = [
        r"^text_model\.",
        r"^text_projection\.",
        r"^visual_projection\.",
        r"^logit_scale$",
        r"^hidden_states_norms\.",
    ]


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
        self.stages = build_stages(config, FlorenceVisionStage)
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

        output = FlorenceVisionModelOutput(
            **self.encode_stages(self.embeddings(pixel_values), output_hidden_states, output_attentions, **kwargs)
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
