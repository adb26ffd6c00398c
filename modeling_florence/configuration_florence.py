# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Configurations of the Florence two-tower model: the CoSwin image tower, the CLIP-style text tower and the pair.

Field names follow Transformers' `SwinConfig` and `CLIPTextConfig`, so code written for those reads ours unchanged.
Named presets (``coswin-t`` ... ``florence-huge``) are JSON files shipped with the package; see
:func:`load_preset`.
"""

import dataclasses
import difflib
import json
from pathlib import Path

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)

PATCH_EMBED_CHOICES = ("conv", "linear")
DOWNSAMPLE_CHOICES = ("conv", "merge")

# Keyword arguments Transformers' `PreTrainedConfig` reads, or writes into a saved `config.json`, besides its dataclass
# fields: each is accepted by every Florence config (see `check_config_kwargs`).
PRETRAINED_CONFIG_KWARGS = frozenset({
    "model_type", "name_or_path", "_name_or_path", "_commit_hash", "transformers_version", "auto_map",
    "torch_dtype", "num_labels", "output_attentions", "attn_implementation", "_attn_implementation_internal",
    "experts_implementation", "_experts_implementation_internal", "per_layer_config", "rope_scaling", "rope_theta",
    "tokenizer_class", "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id",
    "tie_word_embeddings", "is_decoder", "add_cross_attention", "cross_attention_hidden_size",
    "tie_encoder_decoder", "finetuning_task", "task_specific_params", "prefix", "pruned_heads", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "quantization_config", "base_model_tp_plan", "base_model_pp_plan",
})


def _accepted_kwargs(config_class) -> set[str]:
    """The keys a config class takes: its dataclass fields (Transformers' own included), `attribute_map` aliases,
    the generation parameters Transformers drops from configs, and `PRETRAINED_CONFIG_KWARGS`."""
    from transformers.generation import GenerationConfig

    accepted = {field.name for field in dataclasses.fields(config_class)} | set(config_class.attribute_map)
    accepted |= {name.lstrip("_") for name in accepted if name.startswith("_")}  # `_out_features` -> `out_features`
    return accepted | set(GenerationConfig._get_default_generation_params()) | PRETRAINED_CONFIG_KWARGS


def build_sub_configs(config: PreTrainedConfig) -> None:
    """Sub-configs given as dicts or None become instances of their classes (`sub_configs`), on any Transformers 5
    release."""
    for key, config_class in config.sub_configs.items():
        value = getattr(config, key)
        if value is None or isinstance(value, dict):
            setattr(config, key, config_class(**(value or {})))


def check_feature_stages(stages, last: int, field: str = "vision_feature_stages") -> list[int]:
    """CoSwin stages (1-based) whose tokens a head reads: ascending, distinct, in [1, last] and ending with the last."""
    if (
        not isinstance(stages, (list, tuple)) or not stages
        or any(not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= last for s in stages)
        or list(stages) != sorted(set(stages)) or stages[-1] != last
    ):
        raise ValueError(f"{field} must list CoSwin stages in [1, {last}] in ascending order, ending with the last "
                         f"({last}), got {stages!r}")
    return list(stages)


def check_config_kwargs(config, kwargs: dict, derived: tuple[str, ...] = ()) -> None:
    """Refuse keyword arguments a config would otherwise keep as stray attributes (`embed_dims=64` next to
    `embed_dim`), with a `ValueError` naming the key, its closest field and the valid fields. `derived` names the
    attributes the config computes itself and writes into `to_dict()` (read back when a saved config loads)."""
    accepted = _accepted_kwargs(type(config)) | set(derived)
    unknown = sorted(key for key in kwargs if key not in accepted)
    if not unknown:
        return
    fields = sorted(field.name for field in dataclasses.fields(type(config)) if not field.name.startswith("_"))
    hints = [f"{key!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, fields, 1))
                           else "") for key in unknown]
    raise ValueError(f"Unknown {type(config).__name__} argument(s) {', '.join(hints)}; valid fields: {fields}")


def check_overrides(config, overrides: dict, where: str = "overrides") -> None:
    """Every key of `overrides` (and of a nested sub-config dict) must be a field of `config` (or a keyword its
    constructor takes, such as `num_labels`): one check for `load_preset` overrides and recipes' `model_overrides`.
    A `ValueError` names the key, its closest field and the valid ones."""
    known = config.to_dict()
    for key, value in overrides.items():
        if key not in known and key not in _accepted_kwargs(type(config)):  # e.g. `num_labels`
            close = difflib.get_close_matches(key, list(known), 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}.{key} is not a field of the {config.model_type} config{hint}; "
                             f"fields: {sorted(known)}")
        if isinstance(value, dict) and isinstance(getattr(config, key, None), PreTrainedConfig):  # a sub-config
            check_overrides(getattr(config, key), value, f"{where}.{key}")


def check_window_tower_fields(config) -> None:
    """The field checks CoSwin and Video CoSwin configs share: the variants, one depth and one head count per stage,
    a positive `mlp_ratio`. Raises a `ValueError` naming the offending field."""
    if config.patch_embed not in PATCH_EMBED_CHOICES:
        raise ValueError(f"patch_embed must be one of {PATCH_EMBED_CHOICES}, got {config.patch_embed!r}")
    if config.downsample not in DOWNSAMPLE_CHOICES:
        raise ValueError(f"downsample must be one of {DOWNSAMPLE_CHOICES}, got {config.downsample!r}")
    if len(config.depths) != len(config.num_heads):
        raise ValueError(
            f"depths and num_heads must have the same length (one entry per stage), got depths={config.depths} "
            f"and num_heads={config.num_heads}"
        )
    if len(config.depths) == 0 or any(d < 1 for d in config.depths):
        raise ValueError(f"depths must list at least one stage, each with >= 1 block, got {config.depths}")
    if config.mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {config.mlp_ratio}")


class FlorenceVisionConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of the CoSwin image encoder ([`FlorenceVisionModel`]).

    CoSwin is a Swin Transformer whose patch embedding and patch merging are CvT convolutional embeddings
    (`patch_embed="conv"`, `downsample="conv"`). With `patch_embed="linear"` and `downsample="merge"` it is exactly a
    plain Swin Transformer, so Swin, timm and UniCL weights load without loss.

    Args:
        embed_dim: channels after the patch embedding; stage `i` has `embed_dim * 2**i`.
        depths: number of Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: side of the square attention window (in tokens).
        mlp_ratio: MLP hidden width as a multiple of the stage width.
        qkv_bias: whether the fused `qkv` projection has a bias.
        hidden_act: MLP activation.
        hidden_dropout_prob, attention_probs_dropout_prob: dropout rates.
        drop_path_rate: stochastic-depth rate, linearly increasing over all blocks.
        layer_norm_eps: LayerNorm epsilon.
        image_size: the training resolution (informative: the model runs at any resolution).
        num_channels: input channels.
        patch_size: stride of the first embedding (4 = Swin's patch 4). With `patch_embed="conv"` the kernel is
            `2 * patch_size - 1` (7 for 4), as in CvT.
        patch_embed: `"conv"` (CvT overlapping convolution) or `"linear"` (Swin's non-overlapping patches).
        downsample: `"conv"` (CvT 3x3 stride-2 convolution) or `"merge"` (Swin's 2x2 patch merging).
        out_features / out_indices: stages returned when used as a backbone (`stem`, `stage1`..`stage4`).
    """

    model_type = "florence_coswin"
    base_config_key = "vision_config"
    attribute_map = {"num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"}

    embed_dim: int = 96
    depths: list[int] | tuple[int, ...] = (2, 2, 6, 2)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.1
    layer_norm_eps: float = 1e-5
    image_size: int | list[int] | tuple[int, int] = 224
    num_channels: int = 3
    patch_size: int = 4
    patch_embed: str = "conv"
    downsample: str = "conv"
    initializer_range: float = 0.02
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.depths = list(self.depths)
        self.num_heads = list(self.num_heads)
        self.num_layers = len(self.depths)
        # Channel width of the last stage; `hidden_size` is what generic Transformers code looks for.
        self.hidden_size = int(self.embed_dim * 2 ** (len(self.depths) - 1))
        self.stage_names = ["stem"] + [f"stage{idx}" for idx in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        self.check_fields()
        check_config_kwargs(self, kwargs, derived=("hidden_size", "num_layers", "stage_names"))
        super().__post_init__(**kwargs)

    @property
    def stage_dims(self) -> list[int]:
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    def check_head_widths(self):
        """Every stage width must split evenly into its heads. Checked when a model is built, not when the config is
        (as Transformers' Swin: a config with an odd `embed_dim` still serialises, loads and compares)."""
        for stage, (dim, heads) in enumerate(zip(self.stage_dims, self.num_heads)):
            if dim % heads != 0:
                raise ValueError(
                    f"num_heads[{stage}]={heads} does not divide the stage width {dim} "
                    f"(embed_dim={self.embed_dim} * 2**{stage})"
                )

    @property
    def embed_dim_per_stage(self) -> list[int]:
        """Channel width of every stage (the name generic Transformers code reads for multi-stage encoders)."""
        return self.stage_dims

    def check_fields(self):
        """Reject shapes that cannot build a model with a `ValueError` naming the offending field."""
        check_window_tower_fields(self)
        if any(heads < 1 for heads in self.num_heads):
            raise ValueError(f"num_heads must be positive integers, got {self.num_heads}")
        for name in ("embed_dim", "window_size", "patch_size", "num_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")


class FlorenceTextConfig(PreTrainedConfig):
    r"""
    Configuration of the CLIP-style causal text transformer ([`FlorenceTextModel`]); field names follow
    `CLIPTextConfig`. Defaults are UniCL's released text tower: width 512, 12 layers, 8 heads, 77 positions and the
    CLIP BPE vocabulary (start 49406, end 49407).

    `causal_attention=False` builds the tower with bidirectional self-attention (every token sees the whole text, as
    BERT/RoBERTa): what a fusion model such as [`FlorenceForVQA`] needs. It is read when the model is built.
    """

    model_type = "florence_text"
    base_config_key = "text_config"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int | None = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float | None = 1e-5
    attention_dropout: int | float | None = 0.0
    initializer_range: float = 0.02
    initializer_factor: float | None = 1.0
    pad_token_id: int | None = 0
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    causal_attention: bool = True

    def __post_init__(self, **kwargs):
        self.check_fields()
        check_config_kwargs(self, kwargs)
        super().__post_init__(**kwargs)

    def check_fields(self):
        """Reject shapes that cannot build a model with a `ValueError` naming the offending field."""
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} does not divide hidden_size={self.hidden_size}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.eos_token_id is not None and not 0 <= self.eos_token_id < self.vocab_size:
            # A warning, as Transformers' own token-id validation: configs are often built before their ids are set.
            logger.warning(
                f"eos_token_id={self.eos_token_id} is outside the vocabulary (vocab_size={self.vocab_size}): the text "
                "model then pools every text at its last token"
            )


class FlorenceConfig(PreTrainedConfig):
    r"""
    Configuration of [`FlorenceModel`]: a CoSwin image tower and a text tower joined by bias-free linear projections
    to `projection_dim`, compared with a learnable temperature initialised at `exp(logit_scale_init_value)`.
    """

    model_type = "florence"
    sub_configs_defaults = {"vision_config": FlorenceVisionConfig, "text_config": FlorenceTextConfig}
    # Transformers releases before `sub_configs_defaults` read this mapping instead.
    sub_configs = {"vision_config": FlorenceVisionConfig, "text_config": FlorenceTextConfig}

    vision_config: dict | FlorenceVisionConfig | None = None
    text_config: dict | FlorenceTextConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float | int = 2.6592
    initializer_factor: float | None = 1.0

    def __post_init__(self, **kwargs):
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be a positive integer, got {self.projection_dim}")
        build_sub_configs(self)
        check_config_kwargs(self, kwargs)
        super().__post_init__(**kwargs)


CONFIG_CLASSES = {cls.model_type: cls for cls in (FlorenceVisionConfig, FlorenceTextConfig, FlorenceConfig)}


def presets_dir() -> Path:
    """Folder holding the preset JSON files: the installed package data, else the repository's `configuration/`."""
    installed = Path(__file__).resolve().parent / "presets"
    if installed.is_dir():
        return installed
    repository = Path(__file__).resolve().parent.parent / "configuration"
    if repository.is_dir():
        return repository
    raise FileNotFoundError(f"No presets folder found next to {__file__} (looked for {installed} and {repository})")


def available_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.json") if _preset_model_type(p) is not None)


def _preset_model_type(path: Path):
    """The model type a JSON file declares, or None for other files in the folder (recipes, templates)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content.get("model_type") if isinstance(content, dict) else None


def preset_path(name: str) -> Path:
    """The JSON file of a named preset. Only names are read, never paths: a name with a path separator or a leading
    dot (`../x`, `/etc/x`) is refused, so `load_preset` reads nothing outside the presets folder; load a config file
    of your own with `AutoConfig.from_pretrained` or `Config.from_json_file`."""
    if not isinstance(name, str) or not name or any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise ValueError(f"Preset names are plain names such as 'florence-tiny', not paths, got {name!r}: to load a "
                         f"config file use AutoConfig.from_pretrained; available presets: "
                         f"{', '.join(available_presets())}")
    path = presets_dir() / f"{name}.json"
    if (_preset_model_type(path) if path.is_file() else None) not in CONFIG_CLASSES:
        raise ValueError(f"Unknown preset {name!r}; available presets: {', '.join(available_presets())}")
    return path


def load_preset(name: str, **overrides) -> PreTrainedConfig:
    """Return the config of a named preset (e.g. ``"coswin-t"``, ``"florence-base"``), with keyword overrides.

    A dict override of a sub-config is merged into the preset's (``vision_config={"image_size": 32}`` changes only
    the image size), so a recipe can adjust one field without restating the tower. Every override key, nested ones
    included, must be a field of the config (`check_overrides`, the check recipes use): a typo is an error."""
    config_dict = json.loads(preset_path(name).read_text())
    config_class = CONFIG_CLASSES[config_dict.pop("model_type")]
    if overrides:
        check_overrides(config_class(**config_dict), overrides, where=name)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config_dict.get(key), dict):
            value = {**config_dict[key], **value}
        config_dict[key] = value
    return config_class(**config_dict)


__all__ = [
    "FlorenceConfig",
    "FlorenceTextConfig",
    "FlorenceVisionConfig",
    "available_presets",
    "check_config_kwargs",
    "check_overrides",
    "load_preset",
    "presets_dir",
]
