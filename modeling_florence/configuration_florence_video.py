# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Configurations of Video CoSwin (Florence's "time" adapter) and of the video-text model built on it.

Field names follow Transformers' `SwinConfig` (and [`FlorenceVisionConfig`]) with the sizes made 3-D:
`patch_size` and `window_size` are `(t, h, w)`. `window_sizes` optionally gives one window per stage (Florence's
dynamic window: small windows early, larger ones late). `patch_embed` / `downsample` pick the tokenizer and the
merging: `"conv"` is Florence's 3-D convolutional embedding and merging, `"linear"` / `"merge"` is plain Video Swin
(torchvision `swin3d_*`, mmaction2 / official Video Swin weights load exactly).
"""

from transformers import PreTrainedConfig

from .configuration_florence import (
    DOWNSAMPLE_CHOICES,
    PATCH_EMBED_CHOICES,
    FlorenceTextConfig,
    build_sub_configs,
    check_config_kwargs,
    check_window_tower_fields,
)

WINDOW_BIAS_CHOICES = ("subtable", "truncated")


def _triple(name: str, value) -> list[int]:
    """An int or a length-3 sequence of positive ints -> `[t, h, w]`, else a `ValueError` naming the field."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value, value]
    value = list(value) if isinstance(value, (list, tuple)) else value
    if not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, int) and v >= 1 for v in value):
        raise ValueError(f"{name} must be three positive integers (t, h, w), got {value!r}")
    return value


class FlorenceVideoVisionConfig(PreTrainedConfig):
    r"""
    Configuration of Video CoSwin ([`FlorenceVideoVisionModel`]).

    Args:
        embed_dim: channels after the tokenizer; stage `i` has `embed_dim * 2**i`.
        depths: blocks per stage. num_heads: attention heads per stage.
        patch_size: `(t, h, w)` stride of the tokenizer (each `t x h x w` tube becomes one token). With
            `patch_embed="conv"` the spatial kernel is `2 * h - 1` (CvT's overlapping 7x7 for 4) and the temporal kernel
            is `t`; with `"linear"` the kernel equals the stride (Video Swin).
        window_size: `(t, h, w)` attention window, shifted by half on every second block.
        window_sizes: optional per-stage windows (one `(t, h, w)` per stage), overriding `window_size`.
        temporal_kernel_size: temporal extent of the 3-D convolutional merging (`downsample="conv"`); spatially it is
            CvT's 3x3 stride 2. Time is never downsampled after the tokenizer (as in Video Swin).
        patch_embed: `"conv"` (Conv3d, Florence) or `"linear"` (non-overlapping tubes, Video Swin).
        downsample: `"conv"` (3-D convolution, Florence) or `"merge"` (2x2 patch merging per frame, Video Swin).
        window_bias: how a window shrunk to a small feature map reads the relative-position bias: `"subtable"` (the
            exact sub-table of the relative offsets that occur; default, consistent with the 2-D CoSwin) or
            `"truncated"` (the first rows and columns of the full index, what Video Swin and torchvision do; the
            converter sets it so converted checkpoints reproduce their source at every size).
        num_frames: frames per clip in training (informative: the model runs on any number of frames).
        image_size: training resolution (informative: any resolution runs).
        Others as in [`FlorenceVisionConfig`].
    """

    model_type = "florence_video_coswin"
    base_config_key = "vision_config"
    attribute_map = {"num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"}

    embed_dim: int = 96
    depths: list[int] | tuple[int, ...] = (2, 2, 6, 2)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24)
    patch_size: int | list[int] | tuple[int, ...] = (2, 4, 4)
    window_size: int | list[int] | tuple[int, ...] = (8, 7, 7)
    window_sizes: list | tuple | None = None
    temporal_kernel_size: int = 3
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.1
    layer_norm_eps: float = 1e-5
    num_frames: int = 16
    image_size: int | list[int] | tuple[int, ...] = 224
    num_channels: int = 3
    patch_embed: str = "conv"
    downsample: str = "conv"
    window_bias: str = "subtable"
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.depths = list(self.depths)
        self.num_heads = list(self.num_heads)
        self.patch_size = _triple("patch_size", self.patch_size)
        self.window_size = _triple("window_size", self.window_size)
        if self.window_sizes is not None:
            if not isinstance(self.window_sizes, (list, tuple)) or len(self.window_sizes) != len(self.depths):
                raise ValueError(
                    f"window_sizes must give one (t, h, w) window per stage ({len(self.depths)} stages), "
                    f"got {self.window_sizes!r}"
                )
            self.window_sizes = [_triple(f"window_sizes[{i}]", w) for i, w in enumerate(self.window_sizes)]
        self.num_layers = len(self.depths)
        self.hidden_size = int(self.embed_dim * 2 ** (len(self.depths) - 1))
        self.check_fields()
        check_config_kwargs(self, kwargs, derived=("hidden_size", "num_layers"))
        super().__post_init__(**kwargs)

    @property
    def stage_dims(self) -> list[int]:
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    @property
    def stage_window_sizes(self) -> list[list[int]]:
        """The `(t, h, w)` window of every stage."""
        return self.window_sizes if self.window_sizes is not None else [self.window_size] * len(self.depths)

    def check_fields(self):
        """Reject values that cannot build a model with a `ValueError` naming the offending field."""
        check_window_tower_fields(self)
        if self.window_bias not in WINDOW_BIAS_CHOICES:
            raise ValueError(f"window_bias must be one of {WINDOW_BIAS_CHOICES}, got {self.window_bias!r}")
        for stage, (dim, heads) in enumerate(zip(self.stage_dims, self.num_heads)):
            if heads < 1 or dim % heads != 0:
                raise ValueError(
                    f"num_heads[{stage}]={heads} does not divide the stage width {dim} "
                    f"(embed_dim={self.embed_dim} * 2**{stage})"
                )
        for name in ("embed_dim", "num_channels", "num_frames", "temporal_kernel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.temporal_kernel_size % 2 == 0:
            raise ValueError(
                f"temporal_kernel_size must be odd (the merging keeps the number of frames), got "
                f"{self.temporal_kernel_size}"
            )


class FlorenceVideoConfig(PreTrainedConfig):
    r"""
    Configuration of [`FlorenceVideoModel`] (Video CoSwin + Florence text tower + projections) and of
    [`FlorenceForVideoClassification`] (Video CoSwin + a linear head; `num_labels` / `id2label` as usual).

    `num_frames` mirrors `vision_config.num_frames` (the video-classification pipeline reads it from here).
    """

    model_type = "florence_video"
    sub_configs_defaults = {"vision_config": FlorenceVideoVisionConfig, "text_config": FlorenceTextConfig}
    sub_configs = {"vision_config": FlorenceVideoVisionConfig, "text_config": FlorenceTextConfig}

    vision_config: dict | FlorenceVideoVisionConfig | None = None
    text_config: dict | FlorenceTextConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float | int = 2.6592
    classifier_dropout: float | int = 0.0
    initializer_factor: float | None = 1.0

    def __post_init__(self, **kwargs):
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be a positive integer, got {self.projection_dim}")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        kwargs.pop("num_frames", None)  # derived from vision_config (saved for the pipeline, never read back)
        build_sub_configs(self)
        check_config_kwargs(self, kwargs)
        super().__post_init__(**kwargs)

    @property
    def num_frames(self) -> int:
        return self.vision_config.num_frames

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["num_frames"] = self.vision_config.num_frames
        return output


__all__ = ["FlorenceVideoConfig", "FlorenceVideoVisionConfig"]


def _register_presets() -> None:
    """Let `load_preset("florence-video-tiny")` build these configs (presets are found by their `model_type`)."""
    from .configuration_florence import CONFIG_CLASSES

    for config_class in (FlorenceVideoVisionConfig, FlorenceVideoConfig):
        CONFIG_CLASSES.setdefault(config_class.model_type, config_class)


_register_presets()
