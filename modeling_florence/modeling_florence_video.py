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

All three build from a pretrained Florence image model in one call with `from_florence` (`from_image_model` is its
deprecated alias for one release) (inflation: 2-D kernels spread
over time as `W / k_t`, the relative-position bias copied along the temporal offsets).

Clips are `(batch, frames, channels, height, width)` (the `pixel_values_videos` layout of Transformers' video
processors); tokens stay channels-last `(B, T, H, W, C)` inside the stages. Any number of frames and any resolution
run on one instance: maps that are not window multiples are zero-padded after the first LayerNorm of a block, and a
stage whose map is no larger than the window along an axis uses a window of the map's size and no shift along it.
"""

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import can_return_tuple

from .configuration_florence_video import FlorenceVideoConfig, FlorenceVideoVisionConfig
from .modeling_coswin import (
    FlorencePreTrainedBase,
    WINDOW_BIAS_INDEX,
    FlorenceStageBase,
    FlorenceVisionModelOutput,
    FlorenceVisionPatchMerging,
    FlorenceWindowAttentionBase,
    FlorenceWindowLayer,
    FlorenceWindowPreTrainedModel,
    build_stages,
    relative_position_index,
    resolve_output_flags,
    shifted_window_mask,
    subtable_index,
    truncated_index,
    window_partition,
    window_reverse,
)
from .modeling_florence import FlorenceTwoTowerMixin, two_tower_output_class

Size3 = tuple[int, int, int]


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class FlorenceVideoVisionModelOutput(FlorenceVisionModelOutput):
    """
    Output of [`FlorenceVideoVisionModel`]: the fields of [`FlorenceVisionModelOutput`], in the same order.

    Args:
        last_hidden_state: `(B, L, C)` tokens of the last stage (`L = T' * H' * W'`) after the final LayerNorm.
        pooler_output: `(B, C)` global average of `last_hidden_state` (the video feature).
        hidden_states: with `output_hidden_states=True`, `(B, L_i, C_i)` tokens after the tokenizer and each stage.
        attentions: with `output_attentions=True` (eager attention), per-block `(B * windows, heads, N, N)` weights.
        feature_maps: per-stage `(B, C_i, T', H_i, W_i)` maps (before the final LayerNorm) for dense heads.
    """


FlorenceVideoOutput = two_tower_output_class(
    "FlorenceVideoOutput",
    "video",
    FlorenceVideoVisionModelOutput,
    """
    Output of [`FlorenceVideoModel`] (the video counterpart of `CLIPOutput` / [`FlorenceOutput`]).

    Args:
        loss: UniCL loss, when `return_loss` (or `labels`) is given.
        logits_per_video: `(videos, texts)` scaled cosine similarities.
        logits_per_text: `(texts, videos)`.
        text_embeds, video_embeds: L2-normalised projected features.
        text_model_output, vision_model_output: the towers' outputs.
    """,
    __name__,
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


class FlorenceVideoPatchMerging(FlorenceVisionPatchMerging):
    """Video Swin's merging: CoSwin's patch merging applied per frame (x00, x10, x01, x11, LayerNorm, linear)."""


# The variants a config selects, chosen once at construction (the names of the 2-D tower; the old names are aliases).
PATCH_EMBEDDINGS = {"conv": FlorenceVideoConvEmbeddings, "linear": FlorenceVideoPatchEmbeddings}
DOWNSAMPLERS = {"conv": FlorenceVideoConvDownsample, "merge": FlorenceVideoPatchMerging}
EMBEDDING_CLASSES = PATCH_EMBEDDINGS  # deprecated alias, removed in the next release
DOWNSAMPLE_CLASSES = DOWNSAMPLERS  # deprecated alias, removed in the next release


# ----------------------------------------------------------------------------------------------------------------------
# 3-D windows: the window core of modeling_coswin with 3-D window tuples
# ----------------------------------------------------------------------------------------------------------------------
def window_partition_3d(hidden_states: torch.Tensor, window: Size3) -> torch.Tensor:
    """`(B, T, H, W, C)` -> `(B * windows, wt * wh * ww, C)`: :func:`window_partition` with a 3-D window."""
    return window_partition(hidden_states, window)


def window_reverse_3d(windows: torch.Tensor, window: Size3, size: Size3) -> torch.Tensor:
    """Inverse of :func:`window_partition_3d` for a padded map of `size = (T, H, W)`."""
    return window_reverse(windows, window, *size)


def relative_position_index_3d(window: Size3, table_window: Size3, device=None) -> torch.Tensor:
    """`(N, N)` index into a `(2Wt-1)(2Wh-1)(2Ww-1)` bias table: :func:`relative_position_index` in 3-D."""
    return relative_position_index(window, table_window, device=device)


def shifted_window_mask_3d(padded_size: Size3, window: Size3, shift: Size3, device, dtype) -> torch.Tensor:
    """`(windows, N, N)` shifted-window mask: :func:`shifted_window_mask` in 3-D."""
    return shifted_window_mask(padded_size, window, shift, device, dtype)


class FlorenceVideoWindowAttention(FlorenceWindowAttentionBase):
    """Multi-head self-attention inside 3-D windows with a learned 3-D relative-position bias per head (the 2-D
    CoSwin's attention with a `(2Wt-1)(2Wh-1)(2Ww-1)`-row table); a shrunk window reads it as `config.window_bias`
    says."""

    def __init__(self, config: FlorenceVideoVisionConfig, dim: int, num_heads: int, window_size: Size3):
        super().__init__(config, dim, num_heads, tuple(window_size), WINDOW_BIAS_INDEX[config.window_bias])


class FlorenceVideoLayer(FlorenceWindowLayer):
    """One Video Swin block: :class:`FlorenceWindowLayer` over 3-D maps with `(t, h, w)` windows."""

    def __init__(
        self,
        config: FlorenceVideoVisionConfig,
        dim: int,
        num_heads: int,
        window_size: Size3,
        shifted: bool,
        drop_path_rate: float,
    ):
        attention = FlorenceVideoWindowAttention(config, dim, num_heads, window_size)
        super().__init__(config, dim, attention, shifted, drop_path_rate)


class FlorenceVideoStage(FlorenceStageBase):
    """Merging (every stage but the first) followed by blocks alternating plain and shifted 3-D windows."""

    downsamplers = DOWNSAMPLERS

    def make_block(self, config, stage, dim, shifted, drop_path_rate):
        window = config.stage_window_sizes[stage]
        return FlorenceVideoLayer(config, dim, config.num_heads[stage], window, shifted, drop_path_rate)


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


def deprecated_alias(new_name: str, old_name: str) -> classmethod:
    """A classmethod `old_name` that warns (`FutureWarning`) and calls the classmethod `new_name`."""

    def alias(cls, *args, **kwargs):
        warnings.warn(f"{cls.__name__}.{old_name} is deprecated and will be removed in the next release: use "
                      f"{cls.__name__}.{new_name}", FutureWarning, stacklevel=2)
        return getattr(cls, new_name)(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"Deprecated alias of `{new_name}` (removed in the next release)."
    return classmethod(alias)


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


class FlorenceVideoVisionPreTrainedModel(FlorenceWindowPreTrainedModel):
    config_class = FlorenceVideoVisionConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    _no_split_modules = ["FlorenceVideoLayer", "FlorenceVideoConvDownsample", "FlorenceVideoPatchMerging"]


class FlorenceVideoVisionModel(FlorenceVideoVisionPreTrainedModel):
    """Video CoSwin: 3-D tokenizer, stages of 3-D (shifted-)window blocks, final LayerNorm, average pooling.

    Input: `pixel_values` `(B, T, C, H, W)`. Output: [`FlorenceVideoVisionModelOutput`] (5-D per-stage maps)."""

    def __init__(self, config: FlorenceVideoVisionConfig):
        super().__init__(config)
        self.embeddings = PATCH_EMBEDDINGS[config.patch_embed](config)
        self.stages = build_stages(config, FlorenceVideoStage)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    from_image_model = deprecated_alias("from_florence", "from_image_model")

    @classmethod
    def from_florence(cls, image_model_or_folder, num_frames: int | None = None, **video_kwargs):
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
        output = FlorenceVideoVisionModelOutput(
            **self.encode_stages(hidden_states, output_hidden_states, output_attentions, **kwargs)
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


class FlorenceVideoPreTrainedModel(FlorencePreTrainedBase):
    config_class = FlorenceVideoConfig
    base_model_prefix = "florence_video"
    main_input_name = "pixel_values"
    input_modalities = ("video", "text")
    _no_split_modules = ["FlorenceTextEmbeddings", "FlorenceTextLayer", "FlorenceVideoLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        """Modules outside the towers (the towers are `PreTrainedModel`s and initialise themselves): CLIP's init for
        the projections, Swin's for the classification head, the configured temperature.

        Heads are matched at their own module (Transformers skips a custom-code module without direct parameters)."""
        if module is getattr(self, "classifier", None):
            init.trunc_normal_(module.weight, std=self.config.vision_config.initializer_range)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and hasattr(module, "init_std"):  # the projections, as FlorenceModel's
            init.normal_(module.weight, std=module.init_std)
        elif isinstance(module, FlorenceVideoModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class FlorenceVideoModel(FlorenceTwoTowerMixin, FlorenceVideoPreTrainedModel):
    """Florence for video: Video CoSwin + text tower, bias-free projections, learnable temperature, UniCL loss.

    `logits_per_video[i, j]` scores video `i` against text `j`: zero-shot action recognition takes the class prompts
    as texts, text-video retrieval ranks them."""

    vision_tower_class = FlorenceVideoVisionModel
    output_class = FlorenceVideoOutput
    logits_name = "logits_per_video"
    embeds_name = "video_embeds"
    items = "clips"
    pair_name = "video"

    def __init__(self, config: FlorenceVideoConfig):
        super().__init__(config)
        self.build_towers(config)
        self.post_init()

    from_image_model = deprecated_alias("from_florence", "from_image_model")

    @classmethod
    def from_florence(cls, image_model_or_folder, num_frames: int | None = None, **video_kwargs):
        """Inflate a pretrained `FlorenceModel` (object or folder): the image tower becomes Video CoSwin, the text
        tower, both projections and the temperature are copied. Keyword arguments as in
        :func:`video_vision_config_from_image`."""
        image_tower, two_tower = _image_towers(load_image_model(image_model_or_folder))
        if two_tower is None:
            raise ValueError("FlorenceVideoModel.from_florence needs a two-tower FlorenceModel (it copies the text "
                             "tower); inflate a FlorenceVisionModel with FlorenceVideoVisionModel.from_florence")
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
    def get_video_features(self, pixel_values: torch.Tensor, num_views=None, **kwargs):
        """The video tower's output whose `pooler_output` is the projected video feature `(B, projection_dim)`; with
        `num_views` (clips x crops of one video, as FlorenceVideoProcessor returns them) it is the average of the
        views' L2-normalised features, one row per video."""
        vision_outputs = self.projected_vision_outputs(pixel_values, **kwargs)
        if num_views is not None:
            features = F.normalize(vision_outputs.pooler_output, dim=-1)
            vision_outputs.pooler_output = average_views(features, num_views).mean(dim=1)
        return vision_outputs

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
        pixel_values = pixel_values if pixel_values is not None else pixel_values_videos
        kwargs.pop("token_type_ids", None)
        kwargs.pop("num_views", None)
        return self.score_pairs(
            input_ids, pixel_values, labels, return_loss, attention_mask, position_ids, output_hidden_states,
            output_attentions, return_dict,
        )


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

    from_image_model = deprecated_alias("from_florence", "from_image_model")

    @classmethod
    def from_florence(cls, image_model_or_folder, num_frames: int | None = None, num_labels: int | None = None,
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
        labels: `(B,)` class ids; the loss is `self.loss_function` (cross-entropy), as in the image classifier.
        num_views: views per video (default 1); their probabilities are averaged.
        """
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        pixel_values = pixel_values if pixel_values is not None else pixel_values_videos
        # Trainer's `num_items_in_batch` (gradient accumulation) is a loss argument, as in the image classifier.
        loss_kwargs = {"num_items_in_batch": kwargs.pop("num_items_in_batch")} if "num_items_in_batch" in kwargs else {}
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
            labels = check_video_labels(logits, labels)
            if bool((labels == -100).all()):  # cross-entropy would be NaN; 0 keeps the graph (zero gradients)
                loss = logits.float().sum() * 0.0
            else:  # Transformers' classification loss, as FlorenceForImageClassification
                loss = self.loss_function(labels, logits, self.config, **loss_kwargs)

        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


def check_video_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Labels as one class id in [0, num_labels) per video, or -100 to ignore a video; a clear error otherwise."""
    labels = labels.to(logits.device).long()
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},) (one class id per video), got "
                         f"{tuple(labels.shape)}")
    wrong = labels[(labels != -100) & ((labels < 0) | (labels >= logits.shape[-1]))]
    if wrong.numel():
        raise ValueError(f"labels must be class ids in [0, {logits.shape[-1]}) (num_labels) or -100 (ignored), got "
                         f"{wrong.tolist()[:5]}")
    return labels


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
