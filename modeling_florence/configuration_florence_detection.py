# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Configuration of [`FlorenceForObjectDetection`]: CoSwin or DaViT -> FPN (+P6/P7) -> Dynamic Head -> ATSS.

The image tower sits under `vision_config` (as in the two-tower `FlorenceConfig`), so `FlorenceVisionModel` and
`FlorenceVisionBackbone` load their weights from a detector folder too. Its `model_type` picks the tower: a CoSwin
(`florence_coswin`, `FlorenceVisionConfig`) or the DaViT of Florence-2 (`florence_davit` = `FlorenceDaViTConfig`,
or Transformers' `florence_vision` = `Florence2VisionConfig`, turned into the former with `out_features`).
With a `text_config` (and `projection_dim`)
the detector is open-vocabulary: class logits are similarities between region features and class-name embeddings of
the text tower. Presets: ``florence-detection-tiny`` and ``florence-detection-base`` (see `load_preset`).
"""

from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_florence import CONFIG_CLASSES, FlorenceTextConfig, FlorenceVisionConfig, check_config_kwargs
from .configuration_florence_generation import davit_backbone_config, is_davit_config

# How the high branch of a DyHead block (deformable conv on the coarser level L+1) uses the offsets and mask computed
# at level L, whose map is about 4x larger than that branch's output. The official detectron2 code feeds the larger
# tensors to a CUDA kernel that reads them flat ("detectron2"); mmdetection crops their top-left corner ("mmdet").
# Checkpoints trained with either only reproduce under the same rule, hence a config choice.
UPSAMPLED_OFFSET_MODES = ("mmdet", "detectron2")
STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")


class FlorenceDetectionConfig(PreTrainedConfig):
    r"""
    Configuration of [`FlorenceForObjectDetection`] (Florence's "space" adapter: Dynamic Head on an ATSS detector).

    Args:
        vision_config: the image tower: CoSwin ([`FlorenceVisionConfig`] or its dict) or DaViT
            ([`FlorenceDaViTConfig`], Transformers' `Florence2VisionConfig`, or their dicts with `model_type`); see
            `vision_tower`. A DaViT config is rebuilt to return `out_features`.
        out_features: backbone stages fed to the FPN (strides 8, 16, 32 for ``stage2``-``stage4`` with patch 4, and
            for Florence-2's DaViT).
        fpn_channels: channels of the FPN and of every DyHead block (256 in the paper).
        num_dyhead_blocks: number of stacked DyHead blocks (6 in the paper; 0 gives plain FPN + ATSS).
        dyhead_norm_groups: GroupNorm groups after each deformable convolution (16).
        upsampled_offset_mode: ``"mmdet"`` (crop) or ``"detectron2"`` (flat read) for the offsets of the upsampled
            branch, see `UPSAMPLED_OFFSET_MODES`; only matters to reproduce converted checkpoints.
        relu_before_p7: P7 = conv(ReLU(P6)) as detectron2's `LastLevelP6P7` (the official DyHead, True) or
            conv(P6) as mmdetection's FPN with `add_extra_convs="on_output"` (False; set by the mmdet converter).
        anchor_scale: side of the single square anchor per location, in strides (8: 64 px on P3 ... 1024 on P7).
        atss_topk: candidate anchors per level and object, nearest by centre distance (9).
        center_sampling: positives must have their centre inside the object box (ATSS's rule).
        box_coder_weights: `(wx, wy, ww, wh)` of the anchor-delta box coding (10, 10, 5, 5).
        focal_alpha, focal_gamma: sigmoid focal loss parameters (0.25, 2).
        class_loss_weight, giou_loss_weight, centerness_loss_weight: loss weights (1, 2, 1).
        prior_prob: initial foreground probability of the classifier (bias init, 0.01).
        score_threshold, nms_iou_threshold, max_detections, pre_nms_top_k: inference defaults that the detection
            image processor copies (0.05, 0.6, 100, 1000).
        size_divisibility: processors pad images to a multiple of this (128, as DyHead).
        text_config: optional text tower ([`FlorenceTextConfig`]); with it the detector is open-vocabulary.
        projection_dim: width of the joint region/text space (required with `text_config`).
        logit_scale_init_value: open vocabulary: initial log of the similarity scale.
        freeze_text_model: open vocabulary: keep the text tower (and its projection) frozen in training.
        num_labels / id2label / label2id: the closed set of classes (or the stored class names of an open-vocabulary
            detector, used when no text is passed).
    """

    model_type = "florence_detection"
    # The text tower is optional: `text_config=None` stays None (a closed-set detector).
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(FlorenceVisionConfig),
        "text_config": SubConfigSpec(FlorenceTextConfig, optional=True),
    }

    vision_config: dict | PreTrainedConfig | None = None
    out_features: list[str] | tuple[str, ...] = ("stage2", "stage3", "stage4")
    fpn_channels: int = 256
    num_dyhead_blocks: int = 6
    dyhead_norm_groups: int = 16
    upsampled_offset_mode: str = "mmdet"
    relu_before_p7: bool = True
    anchor_scale: float | int = 8.0
    atss_topk: int = 9
    center_sampling: bool = True
    box_coder_weights: list[float] | tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    focal_alpha: float = 0.25
    focal_gamma: float | int = 2.0
    class_loss_weight: float | int = 1.0
    giou_loss_weight: float | int = 2.0
    centerness_loss_weight: float | int = 1.0
    prior_prob: float = 0.01
    score_threshold: float = 0.05
    nms_iou_threshold: float = 0.6
    max_detections: int = 100
    pre_nms_top_k: int = 1000
    size_divisibility: int = 128
    text_config: dict | FlorenceTextConfig | None = None
    projection_dim: int | None = None
    logit_scale_init_value: float | int = 2.3026  # log(10)
    freeze_text_model: bool = True
    initializer_range: float = 0.01

    def __post_init__(self, **kwargs):
        self.out_features = list(self.out_features)
        if is_davit_config(self.vision_config):  # the DaViT tower returns the maps of `out_features`
            self.vision_config = davit_backbone_config(self.vision_config, self.out_features)
        elif self.vision_config is None or isinstance(self.vision_config, dict):
            self.vision_config = FlorenceVisionConfig(**(self.vision_config or {}))
        if isinstance(self.text_config, dict):  # None stays None: a closed-set detector has no text tower
            self.text_config = FlorenceTextConfig(**self.text_config)
        self.box_coder_weights = [float(w) for w in self.box_coder_weights]
        self.check_fields()
        check_config_kwargs(self, kwargs)
        super().__post_init__(**kwargs)

    @property
    def vision_tower(self) -> str:
        """`"davit"` (the DaViT of Florence-2, as `FlorenceDaViTBackbone`) or `"coswin"`, from `vision_config`."""
        return "davit" if is_davit_config(self.vision_config) else "coswin"

    @property
    def is_open_vocabulary(self) -> bool:
        return self.text_config is not None

    @property
    def num_levels(self) -> int:
        """Pyramid levels: one per backbone stage used, plus P6 and P7."""
        return len(self.out_features) + 2

    @property
    def strides(self) -> list[int]:
        """Stride of every pyramid level (8, 16, 32, 64, 128 for stages 2-4 with patch 4, or of Florence-2's DaViT)."""
        if self.vision_tower == "davit":
            first = self.vision_config.stage_strides[STAGE_NAMES.index(self.out_features[0])]
        else:
            first = self.vision_config.patch_size * 2 ** (STAGE_NAMES.index(self.out_features[0]))
        return [first * 2**level for level in range(self.num_levels)]

    def check_fields(self):
        """Reject values that cannot build or train a detector, with a `ValueError` naming the field."""
        stages = STAGE_NAMES[: len(self.vision_config.depths)]
        if not self.out_features or any(name not in stages for name in self.out_features):
            raise ValueError(f"out_features must be backbone stages among {list(stages)}, got {self.out_features}")
        indices = [stages.index(name) for name in self.out_features]
        if indices != list(range(indices[0], indices[0] + len(indices))):
            raise ValueError(f"out_features must be consecutive stages in order (e.g. stage2..stage4), got "
                             f"{self.out_features}")
        if self.vision_tower == "davit" and any(self.vision_config.patch_stride[i] != 2 for i in indices[1:]):
            raise ValueError(f"The FPN needs each stage of out_features to halve the previous one; the DaViT's "
                             f"patch_stride is {list(self.vision_config.patch_stride)}")
        for name in ("fpn_channels", "atss_topk", "max_detections", "pre_nms_top_k", "size_divisibility",
                     "dyhead_norm_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_dyhead_blocks, int) or self.num_dyhead_blocks < 0:
            raise ValueError(f"num_dyhead_blocks must be a non-negative integer, got {self.num_dyhead_blocks!r}")
        if self.fpn_channels % self.dyhead_norm_groups != 0:
            raise ValueError(f"dyhead_norm_groups={self.dyhead_norm_groups} must divide fpn_channels="
                             f"{self.fpn_channels}")
        if self.fpn_channels < 4:
            raise ValueError(f"fpn_channels must be at least 4 (DyReLU squeezes by 4), got {self.fpn_channels}")
        if self.upsampled_offset_mode not in UPSAMPLED_OFFSET_MODES:
            raise ValueError(f"upsampled_offset_mode must be one of {UPSAMPLED_OFFSET_MODES}, got "
                             f"{self.upsampled_offset_mode!r}")
        if not isinstance(self.relu_before_p7, bool):
            raise ValueError(f"relu_before_p7 must be True or False, got {self.relu_before_p7!r}")
        if len(self.box_coder_weights) != 4 or any(w <= 0 for w in self.box_coder_weights):
            raise ValueError(f"box_coder_weights must be 4 positive numbers, got {self.box_coder_weights}")
        if self.anchor_scale <= 0:
            raise ValueError(f"anchor_scale must be positive, got {self.anchor_scale}")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be non-negative, got {self.focal_gamma}")
        for name in ("class_loss_weight", "giou_loss_weight", "centerness_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in ("focal_alpha", "score_threshold", "nms_iou_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0 < self.prior_prob < 1:
            raise ValueError(f"prior_prob must lie strictly between 0 and 1, got {self.prior_prob}")
        if self.text_config is not None and (self.projection_dim is None or self.projection_dim < 1):
            raise ValueError(f"projection_dim must be a positive integer for an open-vocabulary detector (with "
                             f"text_config), got {self.projection_dim!r}")


# `load_preset("florence-detection-tiny")` finds this model type (the presets table lives in configuration_florence).
CONFIG_CLASSES.setdefault(FlorenceDetectionConfig.model_type, FlorenceDetectionConfig)

__all__ = ["FlorenceDetectionConfig", "UPSAMPLED_OFFSET_MODES"]
