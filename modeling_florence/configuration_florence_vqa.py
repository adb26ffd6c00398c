# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Configuration of Florence's METER adapter: co-attention fusion of the two towers, VQA and fusion-pretraining heads.

`FlorenceVQAConfig` composes a `vision_config` and a `text_config`: either the Florence text tower
(`florence_text`, then built bidirectional) or any Transformers text encoder config (`roberta`, `bert`, ...), as the
paper's METER used RoBERTa-base. The answer vocabulary is `id2label` (`num_labels` answers). The image tower follows
the vision config's `model_type`: CoSwin (`florence_coswin`) or the DaViT of Florence-2 (`florence_davit` =
`FlorenceDaViTConfig`, or Transformers' `florence_vision`), whose backbone returns the `vision_feature_stages` maps.
"""

from transformers import AutoConfig, PreTrainedConfig

from .configuration_florence import FlorenceTextConfig, FlorenceVisionConfig, check_config_kwargs, check_feature_stages
from .configuration_florence_generation import davit_backbone_config, is_davit_config


class FlorenceVQAConfig(PreTrainedConfig):
    r"""
    Configuration of [`FlorenceFusionModel`], [`FlorenceForVQA`] and [`FlorenceForVisionLanguagePretraining`].

    Args:
        vision_config: the image tower: CoSwin (`FlorenceVisionConfig` or its dict) or DaViT (`FlorenceDaViTConfig`,
            Transformers' `Florence2VisionConfig`, or their dicts with `model_type`); see `vision_tower`.
        text_config: the text encoder: a `FlorenceTextConfig` (dict without `model_type`, or `model_type:
            "florence_text"`) whose attention is set bidirectional here, or any Transformers encoder config dict with
            its `model_type` (e.g. `"roberta"`).
        hidden_size: width of the fusion layers (768 in METER).
        num_fusion_layers: co-attention layers per stream (6 in METER).
        num_attention_heads: heads of every fusion attention (12).
        intermediate_size: FFN width of the fusion layers (`4 * hidden_size`).
        hidden_act: FFN activation.
        hidden_dropout_prob, attention_probs_dropout_prob: dropout in the fusion layers.
        layer_norm_eps: epsilon of the fusion LayerNorms.
        initializer_range: std of the normal init of the fusion and head weights.
        num_labels / id2label / label2id: the answer vocabulary of the VQA head.
        mask_token_id: id the MLM masking writes into masked positions (the CLIP vocabulary has no mask token: pick
            one the texts do not use); None disables `mask_tokens` until one is given.
        itm_hard_negatives: sample ITM negatives in proportion to the in-batch similarities (ALBEF/METER style)
            rather than uniformly.
        vision_feature_stages: the tower's stages (1-based, ascending, ending with the last) whose tokens enter the
            fusion. None (METER): the last stage only, i.e. the CoSwin's `last_hidden_state` or the DaViT's last map
            (resolved to `[last]` when the config is built; a DaViT config's `out_features` follow).
            `image_feature_stages` is a deprecated alias of this field. Earlier stages add finer
            tokens (e.g. `[3, 4]`: 4x4 + 2x2 tokens of a 64 px image instead of 2x2), each through its own LayerNorm +
            Linear to the fusion width; small images and questions about where things are need them.
        image_position_embeddings: add fixed 2D sine-cosine embeddings of each image token's centre (coordinates on
            the unit square, so any resolution) to the projected image tokens. CoSwin's relative position bias leaves
            its tokens without absolute position, which "where is ..." questions need. No weights.
    """

    model_type = "florence_vqa"
    sub_configs = {"vision_config": FlorenceVisionConfig, "text_config": AutoConfig}
    # Deprecated alias (one release): `image_feature_stages` reads and writes `vision_feature_stages`.
    attribute_map = {"image_feature_stages": "vision_feature_stages"}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    hidden_size: int = 768
    num_fusion_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    mask_token_id: int | None = None
    itm_hard_negatives: bool = True
    vision_feature_stages: list[int] | None = None
    image_position_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if is_davit_config(self.vision_config):  # its out_features are set from vision_feature_stages in check_fields
            self.vision_config = davit_backbone_config(self.vision_config)
        elif self.vision_config is None or isinstance(self.vision_config, dict):
            self.vision_config = FlorenceVisionConfig(**(self.vision_config or {}))
        if self.text_config is None or isinstance(self.text_config, dict):
            text = dict(self.text_config or {})
            model_type = text.pop("model_type", FlorenceTextConfig.model_type)
            if model_type == FlorenceTextConfig.model_type:
                self.text_config = FlorenceTextConfig(**text)
            else:
                self.text_config = AutoConfig.for_model(model_type, **text)
        if getattr(self.text_config, "model_type", None) == FlorenceTextConfig.model_type:
            # Fusion reads every text token in context: the Florence tower is built bidirectional for it.
            self.text_config.causal_attention = False
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self.check_fields()
        check_config_kwargs(self, kwargs)
        super().__post_init__(**kwargs)

    def check_fields(self):
        """Reject values that cannot build a model with a `ValueError` naming the offending field."""
        for name in ("hidden_size", "num_fusion_layers", "num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} does not divide hidden_size={self.hidden_size}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if self.initializer_range < 0:
            raise ValueError(f"initializer_range must be non-negative, got {self.initializer_range!r}")
        text_vocab = getattr(self.text_config, "vocab_size", None)
        if self.mask_token_id is not None and text_vocab is not None and not 0 <= self.mask_token_id < text_vocab:
            raise ValueError(f"mask_token_id={self.mask_token_id} is outside the text vocabulary [0, {text_vocab - 1}]")
        if getattr(self.text_config, "hidden_size", None) is None:
            raise ValueError("text_config must describe an encoder with a hidden_size")
        if self.vision_feature_stages is not None:
            self.vision_feature_stages = check_feature_stages(self.vision_feature_stages,
                                                              len(self.vision_config.depths))
        else:
            self.vision_feature_stages = [len(self.vision_config.depths)]
        if self.vision_tower == "davit":  # the backbone returns exactly the maps of these stages
            self.vision_config.out_features = [f"stage{stage}" for stage in self.vision_feature_stages]
        if self.image_position_embeddings and self.hidden_size % 4:
            raise ValueError(f"image_position_embeddings needs a hidden_size divisible by 4, got {self.hidden_size}")

    @property
    def vision_tower(self) -> str:
        """`"davit"` (the DaViT of Florence-2, as `FlorenceDaViTBackbone`) or `"coswin"`, from `vision_config`."""
        return "davit" if is_davit_config(self.vision_config) else "coswin"

    @property
    def answers(self) -> list[str]:
        """The answer vocabulary, in label order."""
        return [self.id2label[index] for index in range(self.num_labels)]


__all__ = ["FlorenceVQAConfig"]


def _register_preset_type() -> None:
    """Let `load_preset` read `florence-vqa-*` presets (their `model_type` is `florence_vqa`)."""
    from .configuration_florence import CONFIG_CLASSES

    CONFIG_CLASSES.setdefault(FlorenceVQAConfig.model_type, FlorenceVQAConfig)


_register_preset_type()
