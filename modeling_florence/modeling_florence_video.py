# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Video CoSwin, Florence's "time" adapter, and the models built on it.

- [`FlorenceVideoVisionModel`]: Video CoSwin. A 3-D tokenizer turns every `t x h x w` tube of the clip into one token,
  stages of 3-D (shifted-)window attention with a 3-D relative-position bias follow, separated by merging that halves
  the spatial resolution (time is never downsampled after the tokenizer, as in Video Swin). `patch_embed="conv"` /
  `downsample="conv"` is Florence's convolutional tokenizer and merging; `"linear"` / `"merge"` is plain Video Swin,
  numerically identical to torchvision's `swin3d_*` after `conversion/convert_video_swin.py`.
- [`FlorenceVideoModel`]: Video CoSwin + the Florence text tower + projections, for zero-shot action recognition
  and text-video retrieval, trained with the UniCL loss like [`FlorenceModel`].
- [`FlorenceForVideoClassification`]: Video CoSwin + a linear head on the pooled feature.

All three build from a pretrained image model in one call with `from_image_model` (inflation: 2-D kernels spread
over time as `W / k_t`, the relative-position bias copied along the temporal offsets).

Clips are `(batch, frames, channels, height, width)` (the `pixel_values_videos` layout of Transformers' video
processors); tokens stay channels-last `(B, T, H, W, C)` inside the stages. Any number of frames and any resolution
run on one instance: maps that are not window multiples are zero-padded after the first LayerNorm of a block, and a
stage whose map is no larger than the window along an axis uses a window of the map's size and no shift along it.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_florence_video import FlorenceVideoConfig, FlorenceVideoVisionConfig
from .modeling_coswin import (
    SHIFTED_WINDOW_MASK_VALUE,
    FlorenceDropPath,
    FlorenceStageBase,
    FlorenceVisionMLP,
    FlorenceWindowAttentionBase,
    record_tokens,
    resolve_output_flags,
)
from .loss_florence import global_batch_unicl_loss
from .modeling_florence import FlorenceTextModel, encode_pairs

Size3 = tuple[int, int, int]


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class FlorenceVideoVisionModelOutput(ModelOutput):
    """
    Output of [`FlorenceVideoVisionModel`].

    Args:
        last_hidden_state: `(B, L, C)` tokens of the last stage (`L = T' * H' * W'`) after the final LayerNorm.
        pooler_output: `(B, C)` global average of `last_hidden_state` (the video feature).
        feature_maps: per-stage `(B, C_i, T', H_i, W_i)` maps (before the final LayerNorm) for dense heads.
        hidden_states: with `output_hidden_states=True`, `(B, L_i, C_i)` tokens after the tokenizer and each stage.
        attentions: with `output_attentions=True` (eager attention), per-block `(B * windows, heads, N, N)` weights.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class FlorenceVideoOutput(ModelOutput):
    """
    Output of [`FlorenceVideoModel`] (the video counterpart of `CLIPOutput` / [`FlorenceOutput`]).

    Args:
        loss: UniCL loss, when `return_loss` (or `labels`) is given.
        logits_per_video: `(videos, texts)` scaled cosine similarities.
        logits_per_text: `(texts, videos)`.
        text_embeds, video_embeds: L2-normalised projected features.
        text_model_output, vision_model_output: the towers' outputs.
    """

    loss: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: FlorenceVideoVisionModelOutput | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(
            self[k] if k not in ("text_model_output", "vision_model_output") else getattr(self, k).to_tuple()
            for k in self.keys()
        )


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizers and merging (one class per variant; the config picks the class at construction)
# ----------------------------------------------------------------------------------------------------------------------
def _pad_time_replicate(hidden_states: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Repeat the first / last frame of a `(B, C, T, H, W)` tensor `before` / `after` times."""
    if not before and not after:
        return hidden_states
    parts = [hidden_states[:, :, :1]] * before + [hidden_states] + [hidden_states[:, :, -1:]] * after
    return torch.cat(parts, dim=2)


class FlorenceVideoConvEmbeddings(nn.Module):
    """Florence's 3-D convolutional tokenizer: CvT's overlapping spatial kernel (7x7 stride 4 padding 2 for patch 4),
    a temporal kernel equal to the temporal stride (each tube of `t` frames -> one token), then LayerNorm.

    A clip whose length is not a multiple of the temporal patch is completed by repeating its last frame (a still clip
    stays still, which keeps inflation exact), not with black frames."""

    def __init__(self, config: FlorenceVideoVisionConfig):
        super().__init__()
        patch_t, patch_h, patch_w = config.patch_size
        kernel = (patch_t, 2 * patch_h - 1, 2 * patch_w - 1)
        padding = (0, (kernel[1] - patch_h + 1) // 2, (kernel[2] - patch_w + 1) // 2)
        self.patch_t = patch_t
        self.projection = nn.Conv3d(config.num_channels, config.embed_dim, kernel, config.patch_size, padding)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(B, C, T, H, W)` -> `(B, T', H', W', D)`."""
        pixel_values = _pad_time_replicate(pixel_values, 0, (-pixel_values.shape[2]) % self.patch_t)
        return self.norm(self.projection(pixel_values).permute(0, 2, 3, 4, 1))


class FlorenceVideoPatchEmbeddings(nn.Module):
    """Video Swin's tokenizer: non-overlapping `t x h x w` tubes (zero-padded to multiples), a linear map, LayerNorm."""

    def __init__(self, config: FlorenceVideoVisionConfig):
        super().__init__()
        self.patch_size = tuple(config.patch_size)
        self.projection = nn.Conv3d(config.num_channels, config.embed_dim, self.patch_size, self.patch_size)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(B, C, T, H, W)` -> `(B, T', H', W', D)`."""
        pad_t, pad_h, pad_w = ((-size) % patch for size, patch in zip(pixel_values.shape[2:], self.patch_size))
        if pad_t or pad_h or pad_w:
            pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h, 0, pad_t))
        return self.norm(self.projection(pixel_values).permute(0, 2, 3, 4, 1))


class FlorenceVideoConvDownsample(nn.Module):
    """Florence's 3-D convolutional merging: Conv3d (k_t x 3 x 3, stride 1 x 2 x 2) doubling the width, LayerNorm.

    Time keeps its length; the temporal border is padded by repeating the edge frames (spatially: zeros, as CvT)."""

    def __init__(self, config: FlorenceVideoVisionConfig, dim: int):
        super().__init__()
        kernel_t = config.temporal_kernel_size
        self.time_padding = kernel_t // 2
        self.projection = nn.Conv3d(dim, 2 * dim, (kernel_t, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.norm = nn.LayerNorm(2 * dim, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = _pad_time_replicate(hidden_states.permute(0, 4, 1, 2, 3), self.time_padding, self.time_padding)
        return self.norm(self.projection(hidden_states).permute(0, 2, 3, 4, 1))


class FlorenceVideoPatchMerging(nn.Module):
    """Video Swin's merging: per frame, concatenate each 2x2 neighbourhood (x00, x10, x01, x11), LayerNorm, linear."""

    def __init__(self, config: FlorenceVideoVisionConfig, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=config.layer_norm_eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, time, height, width, channels = hidden_states.shape
        if height % 2 or width % 2:
            hidden_states = F.pad(hidden_states, (0, 0, 0, width % 2, 0, height % 2))
            height, width = height + height % 2, width + width % 2
        # (B, T, H/2, 2[h], W/2, 2[w], C) -> (B, T, H/2, W/2, 2[w], 2[h], C): the order x00, x10, x01, x11.
        hidden_states = hidden_states.reshape(batch, time, height // 2, 2, width // 2, 2, channels)
        hidden_states = hidden_states.permute(0, 1, 2, 4, 5, 3, 6).flatten(4)
        return self.reduction(self.norm(hidden_states))


EMBEDDING_CLASSES = {"conv": FlorenceVideoConvEmbeddings, "linear": FlorenceVideoPatchEmbeddings}
DOWNSAMPLE_CLASSES = {"conv": FlorenceVideoConvDownsample, "merge": FlorenceVideoPatchMerging}


# ----------------------------------------------------------------------------------------------------------------------
# 3-D windows
# ----------------------------------------------------------------------------------------------------------------------
def window_partition_3d(hidden_states: torch.Tensor, window: Size3) -> torch.Tensor:
    """`(B, T, H, W, C)` with sizes that are window multiples -> `(B * windows, wt * wh * ww, C)`."""
    batch, time, height, width, channels = hidden_states.shape
    wt, wh, ww = window
    hidden_states = hidden_states.view(batch, time // wt, wt, height // wh, wh, width // ww, ww, channels)
    return hidden_states.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wt * wh * ww, channels)


def window_reverse_3d(windows: torch.Tensor, window: Size3, size: Size3) -> torch.Tensor:
    """Inverse of :func:`window_partition_3d` for a padded map of `size = (T, H, W)`."""
    (wt, wh, ww), (time, height, width) = window, size
    channels = windows.shape[-1]
    windows = windows.view(-1, time // wt, height // wh, width // ww, wt, wh, ww, channels)
    return windows.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(-1, time, height, width, channels)


def relative_position_index_3d(window: Size3, table_window: Size3, device=None) -> torch.Tensor:
    """`(N, N)` index into a `(2Wt-1)(2Wh-1)(2Ww-1)` bias table (of `table_window`) for every token pair of `window`.

    Row-major over (dt, dh, dw): index = dt * (2Wh-1)(2Ww-1) + dh * (2Ww-1) + dw, offsets shifted to start at 0."""
    coords = torch.stack(
        torch.meshgrid(*(torch.arange(size, device=device) for size in window), indexing="ij")
    ).flatten(1)
    relative = coords[:, :, None] - coords[:, None, :]
    _, table_h, table_w = table_window
    offsets = [relative[axis] + (table_window[axis] - 1) for axis in range(3)]
    return offsets[0] * (2 * table_h - 1) * (2 * table_w - 1) + offsets[1] * (2 * table_w - 1) + offsets[2]


def subtable_index(window: Size3, table_window: Size3, full_index: torch.Tensor) -> torch.Tensor:
    """Index of a shrunk window: the exact relative offsets of its token pairs (consistent with the 2-D CoSwin)."""
    return relative_position_index_3d(window, table_window, device=full_index.device)


def truncated_index(window: Size3, table_window: Size3, full_index: torch.Tensor) -> torch.Tensor:
    """Index of a shrunk window as Video Swin and torchvision take it: the first `N` rows and columns of the full
    window's index. Equal to :func:`subtable_index` when only the temporal window shrinks."""
    tokens = window[0] * window[1] * window[2]
    return full_index[:tokens, :tokens]


WINDOW_BIAS_INDEX = {"subtable": subtable_index, "truncated": truncated_index}


def shifted_window_mask_3d(padded_size: Size3, window: Size3, shift: Size3, device, dtype) -> torch.Tensor:
    """`(windows, N, N)` additive mask keeping attention inside the regions a cyclic shift brought together."""
    region = torch.zeros(padded_size, device=device, dtype=torch.int32)
    axis_slices = [
        (slice(0, -size), slice(-size, -step or None), slice(-step or None, None)) for size, step in zip(window, shift)
    ]
    count = 0
    for t_slice in axis_slices[0]:
        for h_slice in axis_slices[1]:
            for w_slice in axis_slices[2]:
                region[t_slice, h_slice, w_slice] = count
                count += 1
    region_windows = window_partition_3d(region[None, ..., None], window).squeeze(-1)
    different = region_windows[:, None, :] != region_windows[:, :, None]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill_(different, SHIFTED_WINDOW_MASK_VALUE)


class FlorenceVideoWindowAttention(FlorenceWindowAttentionBase):
    """Multi-head self-attention inside 3-D windows with a learned 3-D relative-position bias per head (the 2-D
    CoSwin's attention with a `(2Wt-1)(2Wh-1)(2Ww-1)`-row table)."""

    def __init__(self, config: FlorenceVideoVisionConfig, dim: int, num_heads: int, window_size: Size3):
        window_size = tuple(window_size)
        super().__init__(config, dim, num_heads, math.prod(2 * size - 1 for size in window_size))
        self.window_size = window_size
        self.register_buffer(
            "relative_position_index",
            relative_position_index_3d(self.window_size, self.window_size),
            persistent=False,
        )
        self.shrunk_window_index: Callable = WINDOW_BIAS_INDEX[config.window_bias]

    def relative_position_bias(self, window: Size3) -> torch.Tensor:
        """`(heads, N, N)` bias for a window (the configured one, or one shrunk to a small feature map)."""
        if window == self.window_size:
            index = self.relative_position_index
        else:
            index = self.shrunk_window_index(window, self.window_size, self.relative_position_index)
        return self.gather_bias(index, window[0] * window[1] * window[2])


class FlorenceVideoLayer(GradientCheckpointingLayer):
    """One Video Swin block: 3-D (shifted-)window attention and an MLP, each pre-LN with a residual and stochastic
    depth."""

    def __init__(
        self,
        config: FlorenceVideoVisionConfig,
        dim: int,
        num_heads: int,
        window_size: Size3,
        shifted: bool,
        drop_path_rate: float,
    ):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = FlorenceVideoWindowAttention(config, dim, num_heads, self.window_size)
        self.drop_path = FlorenceDropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = FlorenceVisionMLP(config, dim)
        self._mask_cache: dict = {}

    def window_and_shift(self, size: Size3) -> tuple[Size3, Size3]:
        """Per axis: a map no larger than the window gets a window of its own size and no shift (Video Swin's rule)."""
        window = tuple(min(extent, limit) for extent, limit in zip(size, self.window_size))
        shift = tuple(
            limit // 2 if self.shifted and extent > limit else 0 for extent, limit in zip(size, self.window_size)
        )
        return window, shift

    def shift_mask(self, padded_size: Size3, window: Size3, shift: Size3, device, dtype) -> torch.Tensor:
        key = (padded_size, window, shift, device, dtype)
        if key not in self._mask_cache:
            self._mask_cache.clear()
            self._mask_cache[key] = shifted_window_mask_3d(padded_size, window, shift, device, dtype)
        return self._mask_cache[key]

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False, **kwargs):
        size = tuple(hidden_states.shape[1:4])
        window, shift = self.window_and_shift(size)
        shortcut = hidden_states
        hidden_states = self.norm1(hidden_states)

        pad_t, pad_h, pad_w = ((-extent) % limit for extent, limit in zip(size, window))
        if pad_t or pad_h or pad_w:
            hidden_states = F.pad(hidden_states, (0, 0, 0, pad_w, 0, pad_h, 0, pad_t))
        padded_size = (size[0] + pad_t, size[1] + pad_h, size[2] + pad_w)
        has_shift = any(shift)
        if has_shift:
            hidden_states = torch.roll(hidden_states, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
            mask = self.shift_mask(padded_size, window, shift, hidden_states.device, hidden_states.dtype)
        else:
            mask = None

        windows = window_partition_3d(hidden_states, window)
        attn_windows, attn_weights = self.attn(windows, window, mask, output_attentions=output_attentions, **kwargs)
        hidden_states = window_reverse_3d(attn_windows, window, padded_size)
        if has_shift:
            hidden_states = torch.roll(hidden_states, shifts=shift, dims=(1, 2, 3))
        if pad_t or pad_h or pad_w:
            hidden_states = hidden_states[:, : size[0], : size[1], : size[2], :]

        hidden_states = shortcut + self.drop_path(hidden_states)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        return (hidden_states, attn_weights) if output_attentions else (hidden_states,)


class FlorenceVideoStage(FlorenceStageBase):
    """Merging (every stage but the first) followed by blocks alternating plain and shifted 3-D windows."""

    def __init__(self, config: FlorenceVideoVisionConfig, stage: int, drop_path_rates: list[float]):
        super().__init__()
        dim = config.stage_dims[stage]
        window = config.stage_window_sizes[stage]
        self.downsample = DOWNSAMPLE_CLASSES[config.downsample](config, dim // 2) if stage > 0 else None
        self.blocks = nn.ModuleList(
            FlorenceVideoLayer(config, dim, config.num_heads[stage], window, shifted=index % 2 == 1, drop_path_rate=rate)
            for index, rate in enumerate(drop_path_rates)
        )


# ----------------------------------------------------------------------------------------------------------------------
# Inflation: 2-D image weights -> 3-D video weights
# ----------------------------------------------------------------------------------------------------------------------
def inflate_conv_weight(weight_2d: torch.Tensor, kernel_t: int) -> torch.Tensor:
    """`(out, in, kh, kw)` -> `(out, in, kt, kh, kw)` with `W3D(t) = W2D / kt`: a clip of identical frames gives the
    2-D response."""
    return weight_2d.unsqueeze(2).repeat(1, 1, kernel_t, 1, 1) / kernel_t


def inflate_relative_position_bias(table_2d: torch.Tensor, window: Size3) -> torch.Tensor:
    """A 2-D Swin bias table `((2W-1)^2, heads)` -> the 3-D table of `window` `(t, h, w)`.

    The spatial table is resized bicubically when the spatial window differs (as Video Swin's inflation does), then
    copied for every temporal offset: the bias depends on the spatial offset only."""
    rows, heads = table_2d.shape
    side = math.isqrt(rows)
    if side * side != rows:
        raise ValueError(f"relative_position_bias_table of shape {tuple(table_2d.shape)} is not a square 2-D table")
    target = (2 * window[1] - 1, 2 * window[2] - 1)
    if (side, side) != target:
        grid = table_2d.t().reshape(1, heads, side, side).float()
        grid = F.interpolate(grid, size=target, mode="bicubic", align_corners=False)
        table_2d = grid.reshape(heads, -1).t().to(table_2d.dtype)
    return table_2d.repeat(2 * window[0] - 1, 1)


def video_vision_config_from_image(
    image_vision_config,
    num_frames: int | None = None,
    patch_size: int | None = None,
    window_size=None,
    window_sizes=None,
    **overrides,
) -> FlorenceVideoVisionConfig:
    """The Video CoSwin config of an image CoSwin config (read by field name, any config class).

    Args:
        num_frames: frames per clip in training (default: the video config's default, 16).
        patch_size: temporal patch (default 2): the tokenizer is `(patch_size, p, p)` with the image patch `p`.
        window_size: `(t, h, w)`, or an int temporal window with the image's spatial window (default `(8, w, w)`).
        window_sizes: optional per-stage `(t, h, w)` windows (Florence's dynamic window).
        overrides: any other [`FlorenceVideoVisionConfig`] field.
    """
    spatial_patch, spatial_window = image_vision_config.patch_size, image_vision_config.window_size
    if window_size is None or isinstance(window_size, int):
        window_size = (8 if window_size is None else window_size, spatial_window, spatial_window)
    fields = {
        name: getattr(image_vision_config, name)
        for name in (
            "embed_dim", "depths", "num_heads", "mlp_ratio", "qkv_bias", "hidden_act", "hidden_dropout_prob",
            "attention_probs_dropout_prob", "drop_path_rate", "layer_norm_eps", "image_size", "num_channels",
            "patch_embed", "downsample", "initializer_range",
        )
    }
    fields.update(patch_size=(2 if patch_size is None else patch_size, spatial_patch, spatial_patch),
                  window_size=window_size, window_sizes=window_sizes)
    if num_frames is not None:
        fields["num_frames"] = num_frames
    fields.update(overrides)
    return FlorenceVideoVisionConfig(**fields)


@torch.no_grad()
def inflate_vision_weights(image_tower: nn.Module, video_tower: "FlorenceVideoVisionModel") -> None:
    """Load an image CoSwin's weights into a Video CoSwin of the same widths and depths (module names match)."""
    source = image_tower.state_dict()
    target = video_tower.state_dict()
    missing = [name for name in target if name not in source]
    if missing:
        raise ValueError(
            f"The image tower has no weights for {missing[:4]}{'...' if len(missing) > 4 else ''}: its patch_embed / "
            "downsample / depths must match the video config"
        )
    inflated = {}
    for name, tensor in target.items():
        weight = source[name]
        if name.endswith("relative_position_bias_table"):
            attention = video_tower.get_submodule(name.rsplit(".", 1)[0])
            weight = inflate_relative_position_bias(weight, attention.window_size)
        elif weight.ndim == 4 and tensor.ndim == 5:
            if tuple(weight.shape[-2:]) != tuple(tensor.shape[-2:]):
                raise ValueError(f"{name}: spatial kernel {tuple(weight.shape)} does not fit {tuple(tensor.shape)}")
            weight = inflate_conv_weight(weight, tensor.shape[2])
        if weight.shape != tensor.shape:
            raise ValueError(f"{name}: image weight {tuple(weight.shape)} does not fit video weight {tuple(tensor.shape)}")
        inflated[name] = weight.to(tensor.dtype)
    video_tower.load_state_dict(inflated, strict=False)


def load_image_model(image_model_or_folder, **kwargs) -> nn.Module:
    """A loaded `FlorenceModel` / `FlorenceVisionModel`, or the model saved in a folder (either kind)."""
    if not isinstance(image_model_or_folder, (str, Path)):
        return image_model_or_folder
    from .configuration_florence import FlorenceConfig
    from .modeling_coswin import FlorenceVisionModel
    from .modeling_florence import FlorenceModel

    model_type = FlorenceConfig.get_config_dict(str(image_model_or_folder))[0].get("model_type")
    if model_type == "florence":
        return FlorenceModel.from_pretrained(image_model_or_folder, **kwargs)
    if model_type == "florence_coswin":
        return FlorenceVisionModel.from_pretrained(image_model_or_folder, **kwargs)
    raise ValueError(
        f"{image_model_or_folder} holds a {model_type!r} model; inflation needs a Florence image model "
        "('florence' or 'florence_coswin')"
    )


def _image_towers(image_model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(image tower, two-tower model or None) of a FlorenceModel-like or FlorenceVisionModel-like object."""
    if hasattr(image_model, "vision_model") and hasattr(image_model, "text_model"):
        return image_model.vision_model, image_model
    if hasattr(image_model, "stages") and hasattr(image_model, "embeddings"):
        return image_model, None
    raise TypeError(f"Cannot inflate a {type(image_model).__name__}: expected a FlorenceModel or FlorenceVisionModel")


# ----------------------------------------------------------------------------------------------------------------------
# Video CoSwin
# ----------------------------------------------------------------------------------------------------------------------
def _init_video_vision_module(module: nn.Module, std: float) -> None:
    """Swin's init: truncated normal for weights and bias tables, zero biases, LayerNorm at identity."""
    if isinstance(module, (nn.Linear, nn.Conv3d)):
        init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    elif isinstance(module, FlorenceVideoWindowAttention):
        init.trunc_normal_(module.relative_position_bias_table, std=std)
        init.copy_(module.relative_position_index, relative_position_index_3d(module.window_size, module.window_size))


def check_pixel_values_videos(config: FlorenceVideoVisionConfig, pixel_values: torch.Tensor | None) -> None:
    """Clear errors for inputs a video model cannot process."""
    if pixel_values is None:
        raise ValueError("pixel_values (or pixel_values_videos) is required")
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(
            f"pixel_values must be a tensor, got {type(pixel_values).__name__}: pass the processor output's "
            "`pixel_values_videos` (or unpack it: `model(**inputs)`), not the whole output"
        )
    expected = f"(batch, frames, {config.num_channels}, height, width)"
    if pixel_values.ndim == 4:
        raise ValueError(
            f"pixel_values must be a batch of clips {expected}, got a 4-D tensor {tuple(pixel_values.shape)}: add the "
            "frames axis (a single image is a clip of one frame: repeat it, or use the image model)"
        )
    if pixel_values.ndim != 5:
        raise ValueError(f"pixel_values must have shape {expected}, got {tuple(pixel_values.shape)}")
    if pixel_values.shape[2] != config.num_channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[2]} channels on axis 2 but the model expects {config.num_channels} "
            f"(shape {tuple(pixel_values.shape)}; the layout is {expected}, as FlorenceVideoProcessor returns it)"
        )
    frames, patch_t = pixel_values.shape[1], config.patch_size[0]
    if frames < patch_t:
        raise ValueError(
            f"The clip has {frames} frame(s), fewer than the temporal patch ({patch_t}): the model needs at least "
            f"{patch_t} frames. FlorenceVideoProcessor pads short videos by repeating frames (num_frames=...)"
        )
    height, width = pixel_values.shape[-2:]
    if height < config.patch_size[1] or width < config.patch_size[2]:
        raise ValueError(
            f"Frames of {height}x{width} pixels are smaller than one patch ({config.patch_size[1]}x{config.patch_size[2]})"
        )


class FlorenceVideoVisionPreTrainedModel(PreTrainedModel):
    config_class = FlorenceVideoVisionConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["FlorenceVideoLayer", "FlorenceVideoConvDownsample", "FlorenceVideoPatchMerging"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        _init_video_vision_module(module, self.config.initializer_range)


class FlorenceVideoVisionModel(FlorenceVideoVisionPreTrainedModel):
    """Video CoSwin: 3-D tokenizer, stages of 3-D (shifted-)window blocks, final LayerNorm, average pooling.

    Input: `pixel_values` `(B, T, C, H, W)`. Output: [`FlorenceVideoVisionModelOutput`] (5-D per-stage maps)."""

    def __init__(self, config: FlorenceVideoVisionConfig):
        super().__init__(config)
        self.embeddings = EMBEDDING_CLASSES[config.patch_embed](config)
        total = sum(config.depths)  # stochastic depth grows linearly over all blocks
        rates = [config.drop_path_rate * index / max(total - 1, 1) for index in range(total)]
        starts = [sum(config.depths[:stage]) for stage in range(len(config.depths))]
        self.stages = nn.ModuleList(
            FlorenceVideoStage(config, stage, rates[start : start + depth])
            for stage, (start, depth) in enumerate(zip(starts, config.depths))
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    @classmethod
    def from_image_model(cls, image_model_or_folder, num_frames: int | None = None, **video_kwargs):
        """Inflate the image tower of a `FlorenceModel` / `FlorenceVisionModel` (object or saved folder).

        `num_frames`, `patch_size` (temporal), `window_size`, `window_sizes` and other vision fields as in
        :func:`video_vision_config_from_image`."""
        image_tower, _ = _image_towers(load_image_model(image_model_or_folder))
        model = cls(video_vision_config_from_image(image_tower.config, num_frames=num_frames, **video_kwargs))
        inflate_vision_weights(image_tower, model)
        return model.to(next(image_tower.parameters()).dtype)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        **kwargs,
    ) -> FlorenceVideoVisionModelOutput | tuple:
        r"""
        pixel_values: `(B, T, C, H, W)` clips (`pixel_values_videos` is accepted as an alias).
        """
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        pixel_values = pixel_values if pixel_values is not None else pixel_values_videos
        check_pixel_values_videos(self.config, pixel_values)
        # As CLIP: inputs follow the model's dtype (fp32 clips into a bf16 model).
        pixel_values = pixel_values.to(self.embeddings.projection.weight.dtype)

        hidden_states = self.embeddings(pixel_values.transpose(1, 2))
        hidden_states, all_hidden_states = record_tokens(hidden_states, () if output_hidden_states else None)
        all_attentions = () if output_attentions else None
        feature_maps = ()
        for stage in self.stages:
            hidden_states, attentions = stage(hidden_states, output_attentions=output_attentions, **kwargs)
            hidden_states, all_hidden_states = record_tokens(hidden_states, all_hidden_states)
            feature_maps += (hidden_states.permute(0, 4, 1, 2, 3),)
            if output_attentions:
                all_attentions += attentions

        last_hidden_state = self.layernorm(hidden_states.flatten(1, 3))
        output = FlorenceVideoVisionModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=last_hidden_state.mean(dim=1),
            feature_maps=feature_maps,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------------------------------------------------
# Video-text model and classification
# ----------------------------------------------------------------------------------------------------------------------
def views_per_video(num_views) -> int:
    """`num_views` as an int (a collator may have turned it into a tensor); None means one view."""
    if num_views is None:
        return 1
    return int(num_views.flatten()[0]) if isinstance(num_views, torch.Tensor) else int(num_views)


def average_views(values: torch.Tensor, num_views) -> torch.Tensor:
    """`(B * views, ...)` -> `(B, views, ...)`."""
    views = views_per_video(num_views)
    if views < 1 or values.shape[0] % views:
        raise ValueError(f"{values.shape[0]} clips cannot be split into groups of num_views={views}")
    return values.view(values.shape[0] // views, views, *values.shape[1:])


class FlorenceVideoPreTrainedModel(PreTrainedModel):
    config_class = FlorenceVideoConfig
    base_model_prefix = "florence_video"
    main_input_name = "pixel_values"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["FlorenceTextEmbeddings", "FlorenceTextLayer", "FlorenceVideoLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        """Modules outside the towers (the towers are `PreTrainedModel`s and initialise themselves): CLIP's init for
        the projections, Swin's for the classification head, the configured temperature.

        Heads are matched at their own module (Transformers skips a custom-code module without direct parameters)."""
        factor = self.config.initializer_factor or 1.0
        if module is getattr(self, "classifier", None):
            init.trunc_normal_(module.weight, std=self.config.vision_config.initializer_range)
            init.zeros_(module.bias)
        elif module is getattr(self, "visual_projection", None) or module is getattr(self, "text_projection", None):
            init.normal_(module.weight, std=module.in_features**-0.5 * factor)
        elif isinstance(module, FlorenceVideoModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class FlorenceVideoModel(FlorenceVideoPreTrainedModel):
    """Florence for video: Video CoSwin + text tower, bias-free projections, learnable temperature, UniCL loss.

    `logits_per_video[i, j]` scores video `i` against text `j`: zero-shot action recognition takes the class prompts
    as texts, text-video retrieval ranks them."""

    def __init__(self, config: FlorenceVideoConfig):
        super().__init__(config)
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_embed_dim = config.text_config.hidden_size
        self.vision_model = FlorenceVideoVisionModel._from_config(config.vision_config)
        self.text_model = FlorenceTextModel._from_config(config.text_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    @classmethod
    def from_image_model(cls, image_model_or_folder, num_frames: int | None = None, **video_kwargs):
        """Inflate a pretrained `FlorenceModel` (object or folder): the image tower becomes Video CoSwin, the text
        tower, both projections and the temperature are copied. Keyword arguments as in
        :func:`video_vision_config_from_image`."""
        image_tower, two_tower = _image_towers(load_image_model(image_model_or_folder))
        if two_tower is None:
            raise ValueError("FlorenceVideoModel.from_image_model needs a two-tower FlorenceModel (it copies the text "
                             "tower); inflate a FlorenceVisionModel with FlorenceVideoVisionModel.from_image_model")
        image_config = two_tower.config
        config = FlorenceVideoConfig(
            vision_config=video_vision_config_from_image(image_tower.config, num_frames=num_frames, **video_kwargs),
            text_config=image_config.text_config.to_dict(),
            projection_dim=image_config.projection_dim,
            logit_scale_init_value=image_config.logit_scale_init_value,
        )
        model = cls(config)
        inflate_vision_weights(image_tower, model.vision_model)
        with torch.no_grad():
            model.text_model.load_state_dict(two_tower.text_model.state_dict())
            model.visual_projection.load_state_dict(two_tower.visual_projection.state_dict())
            model.text_projection.load_state_dict(two_tower.text_projection.state_dict())
            model.logit_scale.copy_(two_tower.logit_scale)
        return model.to(next(two_tower.parameters()).dtype)

    @can_return_tuple
    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling | tuple:
        """The text tower's output whose `pooler_output` is the projected (not normalised) text feature, as
        `FlorenceModel.get_text_features` (Transformers 5)."""
        text_outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        text_outputs.pooler_output = self.text_projection(text_outputs.pooler_output)
        return text_outputs

    @can_return_tuple
    def get_video_features(self, pixel_values: torch.Tensor, num_views=None, **kwargs):
        """The video tower's output whose `pooler_output` is the projected video feature `(B, projection_dim)`; with
        `num_views` (clips x crops of one video, as FlorenceVideoProcessor returns them) it is the average of the
        views' L2-normalised features, one row per video."""
        vision_outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        features = self.visual_projection(vision_outputs.pooler_output)
        if num_views is not None:
            features = average_views(F.normalize(features, dim=-1), num_views).mean(dim=1)
        vision_outputs.pooler_output = features
        return vision_outputs

    def temperature(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100 as in CLIP."""
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
        pixel_values_videos: torch.Tensor | None = None,
        **kwargs,
    ) -> FlorenceVideoOutput | tuple:
        r"""
        pixel_values: `(B, T, C, H, W)` clips (or `pixel_values_videos`, the video processor's key).
        labels: `(B,)` int64 UniCL labels (equal labels = positives); giving them implies `return_loss`.
        return_loss: whether to compute the UniCL loss over the video-text pairs.
        """
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        pixel_values = pixel_values if pixel_values is not None else pixel_values_videos
        if input_ids is None or pixel_values is None:
            raise ValueError("FlorenceVideoModel.forward needs both input_ids and pixel_values (video clips)")
        kwargs.pop("token_type_ids", None)
        kwargs.pop("num_views", None)
        return_loss = return_loss if return_loss is not None else labels is not None
        if return_loss and input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"The UniCL loss needs video-text pairs, got {pixel_values.shape[0]} clips and {input_ids.shape[0]} texts"
            )
        if return_loss and labels is not None and labels.shape != (input_ids.shape[0],):
            raise ValueError(f"labels must have shape ({input_ids.shape[0]},), got {tuple(labels.shape)}")

        vision_outputs, text_outputs, video_embeds, text_embeds = encode_pairs(
            self, pixel_values, input_ids, attention_mask, position_ids, output_hidden_states, output_attentions
        )
        scale = self.temperature()
        logits_per_video = scale * video_embeds @ text_embeds.t()
        logits_per_text = logits_per_video.t()

        # The training loss is the only collective (see loss_florence): inference never communicates.
        loss = global_batch_unicl_loss(video_embeds, text_embeds, scale, labels) if return_loss else None

        output = FlorenceVideoOutput(
            loss=loss,
            logits_per_video=logits_per_video,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            video_embeds=video_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )
        return output if return_dict else output.to_tuple()


class FlorenceForVideoClassification(FlorenceVideoPreTrainedModel):
    """Video CoSwin with a linear head on the pooled feature (action recognition). `loss` is cross-entropy.

    With `num_views` (clips x crops of each video, from `FlorenceVideoProcessor(..., num_clips, num_crops)`) the class
    probabilities of the views are averaged per video (Video Swin's multi-view testing) and `logits` are their log."""

    base_model_prefix = "vision_model"
    input_modalities = ("video",)
    _no_split_modules = ["FlorenceVideoLayer"]

    def __init__(self, config: FlorenceVideoConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = FlorenceVideoVisionModel._from_config(config.vision_config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.vision_config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.get_input_embeddings()

    @classmethod
    def from_image_model(cls, image_model_or_folder, num_frames: int | None = None, num_labels: int | None = None,
                         id2label: dict | None = None, label2id: dict | None = None, **video_kwargs):
        """Inflate the image tower of a `FlorenceModel` / `FlorenceVisionModel` (object or folder) and add a fresh
        head over `num_labels` classes (or the classes of `id2label`)."""
        image_tower, _ = _image_towers(load_image_model(image_model_or_folder))
        labels = {}
        if id2label is not None:
            labels["id2label"] = {int(k): v for k, v in id2label.items()}
            labels["label2id"] = label2id or {v: int(k) for k, v in id2label.items()}
        elif num_labels is not None:
            labels["num_labels"] = num_labels
        config = FlorenceVideoConfig(
            vision_config=video_vision_config_from_image(image_tower.config, num_frames=num_frames, **video_kwargs),
            **labels,
        )
        model = cls(config)
        inflate_vision_weights(image_tower, model.vision_model)
        return model.to(next(image_tower.parameters()).dtype)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        num_views: int | torch.Tensor | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        pixel_values: `(B * views, T, C, H, W)` clips (or `pixel_values_videos`).
        labels: `(B,)` class ids; the loss is cross-entropy.
        num_views: views per video (default 1); their probabilities are averaged.
        """
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        pixel_values = pixel_values if pixel_values is not None else pixel_values_videos
        outputs = self.vision_model(
            pixel_values=pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        if views_per_video(num_views) > 1:
            logits = average_views(logits.softmax(dim=-1), num_views).mean(dim=1).log()

        loss = None
        if labels is not None:
            loss = video_classification_loss(logits, labels)

        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


def video_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over videos with labels in [0, num_labels), or -100 to ignore a video. When every label is -100
    the loss is 0 (still connected to the graph, so `backward` gives zero gradients) instead of cross-entropy's NaN."""
    labels = labels.to(logits.device).long()
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},) (one class id per video), got "
                         f"{tuple(labels.shape)}")
    wrong = labels[(labels != -100) & ((labels < 0) | (labels >= logits.shape[-1]))]
    if wrong.numel():
        raise ValueError(f"labels must be class ids in [0, {logits.shape[-1]}) (num_labels) or -100 (ignored), got "
                         f"{wrong.tolist()[:5]}")
    if bool((labels == -100).all()):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), labels)


__all__ = [
    "FlorenceForVideoClassification",
    "FlorenceVideoModel",
    "FlorenceVideoOutput",
    "FlorenceVideoPreTrainedModel",
    "FlorenceVideoVisionModel",
    "FlorenceVideoVisionModelOutput",
    "FlorenceVideoVisionPreTrainedModel",
    "inflate_conv_weight",
    "inflate_relative_position_bias",
    "video_vision_config_from_image",
]
