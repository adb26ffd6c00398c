# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Configuration of Florence-2 in the family: prompt-based generation on a DaViT or a CoSwin image tower.

`FlorenceGenerationConfig` is Transformers' `Florence2Config` layout (`vision_config`, BART `text_config`,
`image_token_id`, encoder-decoder, tied embeddings) plus the choice of image tower:

- `vision_tower="davit"`: `vision_config` is Transformers' `Florence2VisionConfig` (it carries `projection_dim`,
  `max_position_embeddings` and `max_temporal_embeddings` of the projector), so a `florence-community/Florence-2-*`
  `config.json` loads unchanged and a folder saved with this tower loads back into `Florence2ForConditionalGeneration`;
- `vision_tower="coswin"`: `vision_config` is our CoSwin (`FlorenceVisionConfig`); the projector fields are top-level
  here, and `vision_feature_stages` may add the tokens of earlier stages (as the VQA adapter does).

The `model_type` is `florence_generation`: `florence2` belongs to Transformers.

Presets (see `load_preset`): ``florence2-base`` and ``florence2-large`` (the published checkpoints' shapes on the
DaViT tower) and ``florence-generation-tiny`` (the CoSwin model of `make demo-generation`).
"""

from transformers import AutoConfig, PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin
from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

from .configuration_florence import CONFIG_CLASSES, FlorenceVisionConfig, check_feature_stages

VISION_CONFIGS = {"davit": Florence2VisionConfig, "coswin": FlorenceVisionConfig}
_TOWER_OF_MODEL_TYPE = {config.model_type: tower for tower, config in VISION_CONFIGS.items()}


class FlorenceGenerationConfig(PreTrainedConfig):
    r"""
    Configuration of [`FlorenceGenerationModel`] and [`FlorenceForConditionalGeneration`].

    Args:
        vision_tower: `"davit"` (Transformers' `Florence2VisionBackbone`) or `"coswin"` (our CoSwin). When omitted it
            follows `vision_config["model_type"]` (`florence_vision` -> davit, `florence_coswin` -> coswin), else davit.
        vision_config: the tower's config (`Florence2VisionConfig` or `FlorenceVisionConfig`, or their dicts).
        text_config: the encoder-decoder language model (BART by default, any `AutoConfig` dict with `model_type`).
        image_token_id: id of the `<image>` placeholder the image features replace.
        projection_dim, max_position_embeddings, max_temporal_embeddings: the projector of a CoSwin tower (width of
            the image tokens = the language model's `d_model`, side of the learned 2-D position table, length of the
            cosine temporal table). A DaViT tower reads these from its `vision_config`, as Transformers does.
        vision_feature_stages: CoSwin stages (1-based, ascending, ending with the last) whose tokens enter the
            encoder; None: the last stage only. Earlier stages go through a LayerNorm + Linear to the last width.
        image_feature_norm: CoSwin only: standardise each stage's map per channel with batch statistics
            (`BatchNorm2d` without affine; running statistics at evaluation) before the projector, and leave out the
            cosine temporal embedding (a constant for one image). The tower's maps share a large per-channel mean,
            and its last stage ends in a LayerNorm at the scale of that constant: without it the image tokens of
            different images are nearly alike and a new language model learns to ignore them.
            `FlorenceForConditionalGeneration.from_florence` sets it; False keeps Transformers' projector.
    """

    model_type = "florence_generation"
    # The vision config class depends on `vision_tower` (built in `__post_init__`); listing both keys lets
    # `attn_implementation` reach both towers.
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    vision_tower: str | None = None
    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 51289
    projection_dim: int | None = None
    max_position_embeddings: int = 50
    max_temporal_embeddings: int = 100
    vision_feature_stages: list[int] | None = None
    image_feature_norm: bool = False
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # A Transformers `florence2` config.json loads here unchanged; it stays a `florence_generation` config.
        kwargs.pop("model_type", None)
        self.vision_tower = self._resolve_tower()
        if self.vision_config is None or isinstance(self.vision_config, dict):
            vision = dict(self.vision_config or {})
            vision.pop("model_type", None)
            self.vision_config = VISION_CONFIGS[self.vision_tower](**vision)
        if self.text_config is None or isinstance(self.text_config, dict):
            text = dict(self.text_config or {})
            self.text_config = AutoConfig.for_model(text.pop("model_type", "bart"), **text)
        if self.vision_tower == "coswin" and self.projection_dim is None:
            self.projection_dim = self.text_config.d_model
        self.check_fields()
        super().__post_init__(**kwargs)

    def _resolve_tower(self) -> str:
        vision_type = (
            self.vision_config.get("model_type") if isinstance(self.vision_config, dict)
            else getattr(self.vision_config, "model_type", None)
        )
        tower = self.vision_tower or _TOWER_OF_MODEL_TYPE.get(vision_type, "davit")
        if tower not in VISION_CONFIGS:
            raise ValueError(f"vision_tower must be one of {sorted(VISION_CONFIGS)}, got {tower!r}")
        if vision_type is not None and _TOWER_OF_MODEL_TYPE.get(vision_type) not in (None, tower):
            raise ValueError(f"vision_tower={tower!r} but vision_config is a {vision_type!r} config; pass a "
                             f"{VISION_CONFIGS[tower].__name__} (model_type {VISION_CONFIGS[tower].model_type!r})")
        return tower

    def check_fields(self):
        """Reject values that cannot build a model with a `ValueError` naming the field."""
        if not hasattr(self.text_config, "d_model") or not getattr(self.text_config, "is_encoder_decoder", False):
            raise ValueError(f"text_config must be an encoder-decoder language model (BART-like, with d_model), got "
                             f"{getattr(self.text_config, 'model_type', None)!r}")
        vocab = self.text_config.vocab_size
        if not isinstance(self.image_token_id, int) or not 0 <= self.image_token_id < vocab:
            raise ValueError(f"image_token_id={self.image_token_id!r} is outside the text vocabulary [0, {vocab - 1}]: "
                             "add <image> to the tokenizer and set text_config.vocab_size to len(tokenizer)")
        for name in ("max_position_embeddings", "max_temporal_embeddings"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.vision_tower == "davit":
            if self.image_feature_norm:
                raise ValueError("image_feature_norm is for the CoSwin tower; the DaViT projector is Transformers'")
            if self.vision_feature_stages is not None:
                raise ValueError("vision_feature_stages is for the CoSwin tower; the DaViT tower gives its last stage")
            if self.vision_config.projection_dim != self.text_config.d_model:
                raise ValueError(f"vision_config.projection_dim={self.vision_config.projection_dim} must equal the "
                                 f"language model's d_model={self.text_config.d_model}")
            return
        if self.projection_dim != self.text_config.d_model:
            raise ValueError(f"projection_dim={self.projection_dim} must equal the language model's "
                             f"d_model={self.text_config.d_model}")
        if self.vision_feature_stages is not None:
            self.vision_feature_stages = check_feature_stages(self.vision_feature_stages,
                                                              len(self.vision_config.depths))

    @property
    def image_feature_stages(self) -> list[int]:
        """The CoSwin stages whose tokens enter the encoder (`vision_feature_stages`, or the last stage only)."""
        return self.vision_feature_stages or [len(self.vision_config.depths)]

    def projector_dims(self) -> dict:
        """What the projector reads: image width, output width and the two position tables."""
        if self.vision_tower == "davit":
            vision = self.vision_config
            return dict(embed_dim=[vision.embed_dim[-1]], projection_dim=vision.projection_dim,
                        max_position_embeddings=vision.max_position_embeddings,
                        max_temporal_embeddings=vision.max_temporal_embeddings)
        return dict(embed_dim=[self.vision_config.hidden_size], projection_dim=self.projection_dim,
                    max_position_embeddings=self.max_position_embeddings,
                    max_temporal_embeddings=self.max_temporal_embeddings)


class FlorenceDaViTConfig(BackboneConfigMixin, Florence2VisionConfig):
    r"""
    Transformers' `Florence2VisionConfig` (the DaViT of Florence-2) as a backbone config: `stage_names` are `stem`
    (the first convolutional embedding) and `stage1`..`stageN`; `out_features` / `out_indices` pick the maps a
    [`FlorenceDaViTBackbone`] returns (default: the last stage). It is also the `vision_config` of the detector and
    the VQA adapter on a DaViT tower (`model_type` `florence_davit` there).
    """

    model_type = "florence_davit"
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    @property
    def stage_dims(self) -> list[int]:
        """Channels of `stage1`..`stageN` (as `FlorenceVisionConfig.stage_dims`)."""
        return list(self.embed_dim)

    @property
    def stage_strides(self) -> list[int]:
        """Stride in pixels of `stage1`..`stageN` (the running product of `patch_stride`)."""
        strides, stride = [], 1
        for step in self.patch_stride:
            stride *= step
            strides.append(stride)
        return strides


# `model_type`s of a DaViT tower's config: Transformers' `Florence2VisionConfig` and ours.
DAVIT_MODEL_TYPES = (Florence2VisionConfig.model_type, FlorenceDaViTConfig.model_type)


def is_davit_config(vision_config) -> bool:
    """Whether a vision config (or its dict) describes a DaViT tower (`florence_vision` or `florence_davit`)."""
    model_type = (vision_config.get("model_type") if isinstance(vision_config, dict)
                  else getattr(vision_config, "model_type", None))
    return model_type in DAVIT_MODEL_TYPES


def davit_backbone_config(vision_config, out_features: list[str] | None = None) -> FlorenceDaViTConfig:
    """A DaViT config (`Florence2VisionConfig`, `FlorenceDaViTConfig` or their dicts) as a `FlorenceDaViTConfig`
    returning `out_features` (None: the last stage). Rebuilt from the dict, so configs of remote code load too."""
    vision = dict(vision_config if isinstance(vision_config, dict) else vision_config.to_dict())
    for key in ("model_type", "out_features", "out_indices", "stage_names"):
        vision.pop(key, None)
    return FlorenceDaViTConfig(**vision, out_features=None if out_features is None else list(out_features))


# `load_preset("florence2-base")` finds this model type (the presets table lives in configuration_florence).
CONFIG_CLASSES.setdefault(FlorenceGenerationConfig.model_type, FlorenceGenerationConfig)


__all__ = ["FlorenceDaViTConfig", "FlorenceGenerationConfig"]
