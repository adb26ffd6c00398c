# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""FlorenceForObjectDetection: Florence's "space" adapter, CoSwin or DaViT -> FPN (+P6/P7) -> Dynamic Head -> ATSS.

- **Backbone**, chosen at construction by `vision_config`'s `model_type`, with one LayerNorm per used stage
  (`hidden_states_norms`) either way:
  - CoSwin (`vision_model` = `FlorenceVisionModel`), the layout of `FlorenceVisionBackbone`, so CoSwin, two-tower,
    backbone and detector folders exchange weights;
  - the DaViT of Florence-2 (`vision_model` = `FlorenceDaViTBackbone`, Transformers' `Florence2VisionBackbone` at
    `vision_model.vision_tower`), whose per-stage maps are exactly that tower's hidden states. `from_florence` takes
    it from a Florence-2 folder (ours or Transformers' `florence2`, e.g. `florence-community/Florence-2-base`).
- **FPN** on stages 2-4 with P6/P7 from P5 (detectron2's `LastLevelP6P7`).
- **Dynamic Head** blocks (Dai et al., 2021), per level L: spatial-aware = modulated deformable 3x3 convolutions
  (DCNv2: torchvision's `deform_conv2d` with `mask` on CUDA, grid_sample + one GEMM on CPU) on levels L-1
  (stride 2), L and L+1 (then upsampled), sharing offsets and mask from one 3x3 conv on level L, each followed by
  GroupNorm; scale-aware = avgpool -> 1x1 conv -> ReLU -> hard sigmoid weights, averaged over the branches;
  task-aware = DyReLU.
- **ATSS head**: 1x1 classification, box-delta (x a learned per-level scale) and centerness convolutions on one
  square anchor per location. Closed set: a 1x1 conv to `num_labels`. Open vocabulary: region features projected to
  the text space, cosine similarity with class-name embeddings of the text tower, times a learned scale plus a
  learned bias.
- **Loss**: ATSS assignment (top-k nearest anchors per level, IoU >= mean + std, centre inside the box),
  `torchvision.ops.sigmoid_focal_loss`, `generalized_box_iou_loss` weighted by centerness targets, centerness BCE.

Outputs follow DETR's conventions: `logits` (pre-sigmoid, per location and class) and `pred_boxes` (normalised
`(cx, cy, w, h)` relative to each image's unpadded extent), so `post_process_object_detection` of
`FlorenceDetectionImageProcessor` and Transformers' detection pipelines apply.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss, sigmoid_focal_loss
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .configuration_florence_detection import STAGE_NAMES, FlorenceDetectionConfig
from .deform_conv_florence import modulated_deform_conv2d
from .modeling_coswin import FlorencePreTrainedBase, FlorenceVisionModel, resolve_output_flags
from .modeling_florence import FlorenceTextModel, is_tracing
from .modeling_florence_generation import DAVIT_LAYER_NORM_EPS, FlorenceDaViTBackbone, load_tower_sources

# Largest exp() argument when decoding box sizes, as detectron2/maskrcnn-benchmark (boxes up to 1000/16 anchors).
BOX_SCALE_CLAMP = math.log(1000.0 / 16)


@dataclass
class FlorenceObjectDetectionOutput(ModelOutput):
    """
    Output of [`FlorenceForObjectDetection`].

    Args:
        loss: total training loss (when `labels` are given).
        loss_dict: its terms: `loss_cls` (focal), `loss_box` (centerness-weighted GIoU), `loss_centerness` (BCE), unweighted.
        logits: `(B, N, num_classes)` classification logits of the N anchor locations (all levels, level-major,
            row-major), before the sigmoid.
        pred_boxes: `(B, N, 4)` predicted boxes, normalised `(cx, cy, w, h)` relative to each unpadded image.
        centerness: `(B, N)` centerness logits; the detection score is `sigmoid(logits) * sigmoid(centerness)`.
        feature_maps: with `output_hidden_states`: the `(B, C, H, W)` map of every level after the Dynamic Head.
        hidden_states, attentions: the image tower's, when asked.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    centerness: torch.FloatTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def init_scheme(module: nn.Module, scheme: str, bias: float | str = 0.0) -> nn.Module:
    """Record how `_init_weights` initialises a plain conv/linear layer (Transformers initialises custom-code models
    module by module, on the modules that own parameters): `"c2_xavier"` (Kaiming-uniform a=1, detectron2's FPN),
    `"normal"` (normal(0, initializer_range)), `"torch_default"` (PyTorch's own conv init) or `"fan_in"` (normal with
    std 1/sqrt(fan_in)); `bias` is a value or `"prior"` (the classifier's foreground prior)."""
    module.init_scheme, module.init_bias = scheme, bias
    return module


# ----------------------------------------------------------------------------------------------------------------------
# FPN
# ----------------------------------------------------------------------------------------------------------------------
class FlorenceDetectionFPN(nn.Module):
    """Feature pyramid: 1x1 laterals, nearest top-down sum, 3x3 outputs, then P6 = conv s2 (P5), P7 = conv s2 (relu P6)
    (detectron2's `LastLevelP6P7`; `relu_before_p7=False`: conv s2 (P6), as mmdetection's FPN)."""

    def __init__(self, in_channels: list[int], channels: int, relu_before_p7: bool = True):
        super().__init__()
        self.relu_before_p7 = relu_before_p7
        self.lateral_convs = nn.ModuleList(init_scheme(nn.Conv2d(c, channels, 1), "c2_xavier") for c in in_channels)
        self.output_convs = nn.ModuleList(
            init_scheme(nn.Conv2d(channels, channels, 3, padding=1), "c2_xavier") for _ in in_channels
        )
        self.p6 = init_scheme(nn.Conv2d(channels, channels, 3, stride=2, padding=1), "c2_xavier")
        self.p7 = init_scheme(nn.Conv2d(channels, channels, 3, stride=2, padding=1), "c2_xavier")

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(feature) for conv, feature in zip(self.lateral_convs, features)]
        for level in range(len(laterals) - 2, -1, -1):
            laterals[level] = laterals[level] + F.interpolate(
                laterals[level + 1], size=laterals[level].shape[-2:], mode="nearest"
            )
        outputs = [conv(lateral) for conv, lateral in zip(self.output_convs, laterals)]
        p6 = self.p6(outputs[-1])
        return outputs + [p6, self.p7(F.relu(p6) if self.relu_before_p7 else p6)]


# ----------------------------------------------------------------------------------------------------------------------
# Dynamic Head
# ----------------------------------------------------------------------------------------------------------------------
def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """ReLU6(x + 3) / 6, the official DyHead code's h_sigmoid."""
    return F.relu6(x + 3.0) / 6.0


def crop_offsets(offset: torch.Tensor, mask: torch.Tensor, height: int, width: int):
    """mmdetection's rule: the top-left `height x width` corner of the level-L offsets and mask."""
    return offset[:, :, :height, :width], mask[:, :, :height, :width]


def flatten_offsets(offset: torch.Tensor, mask: torch.Tensor, height: int, width: int):
    """detectron2's (official DyHead) behaviour: the first `C * height * width` values of each sample's offsets and
    mask read flat, which is what its CUDA kernel does with tensors larger than the output."""
    batch = offset.shape[0]
    offset = offset.reshape(batch, -1)[:, : offset.shape[1] * height * width]
    mask = mask.reshape(batch, -1)[:, : mask.shape[1] * height * width]
    return offset.view(batch, -1, height, width), mask.view(batch, -1, height, width)


OFFSET_FITTERS = {"mmdet": crop_offsets, "detectron2": flatten_offsets}


class FlorenceModulatedDeformConv(nn.Module):
    """3x3 modulated deformable convolution (DCNv2, `torchvision.ops.deform_conv2d` with `mask` semantics) through
    `modulated_deform_conv2d`: torchvision's kernel on CUDA, grid_sample + one GEMM on CPU (see deform_conv_florence)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        bound = (in_channels * 9) ** -0.5  # the official DCN's reset: uniform(+-1/sqrt(fan_in)), zero bias
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return modulated_deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=1, mask=mask)


class FlorenceDyHeadSpatialConv(nn.Module):
    """Modulated deformable 3x3 conv followed by GroupNorm (one branch of the spatial-aware attention)."""

    def __init__(self, channels: int, groups: int, stride: int):
        super().__init__()
        self.conv = FlorenceModulatedDeformConv(channels, channels, stride)
        self.norm = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x, offset, mask))


class FlorenceScaleAttention(nn.Module):
    """Scale-aware attention weight of one level: hard_sigmoid(ReLU(conv1x1(avgpool(x)))), shape `(B, 1, 1, 1)`."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = init_scheme(nn.Conv2d(channels, 1, 1), "normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hard_sigmoid(F.relu(self.conv(x.mean(dim=(2, 3), keepdim=True))))


class FlorenceDyReLU(nn.Module):
    """Task-aware attention (DyReLU-B): per-channel coefficients of two affine pieces from the pooled feature,
    `max(a1 * x + b1, a2 * x + b2)`, initialised around the identity (a1 = 1, b1 = a2 = b2 = 0)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.reduce = init_scheme(nn.Linear(channels, channels // reduction), "normal")
        self.expand = init_scheme(nn.Linear(channels // reduction, 4 * channels), "normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        coefficients = hard_sigmoid(self.expand(F.relu(self.reduce(pooled))))[:, :, None, None]
        a1, b1, a2, b2 = coefficients.chunk(4, dim=1)
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        return torch.maximum(x * a1 + b1 - 0.5, x * a2 + b2 - 0.5)


class FlorenceDyHeadBlock(GradientCheckpointingLayer):
    """One Dynamic Head block over all pyramid levels: spatial-aware (DCNv2), scale-aware, then task-aware attention.

    Offsets and mask come from one 3x3 conv on the middle level and are shared by its three branches; the high
    branch runs at the coarser level's resolution and fits them with the configured rule (`OFFSET_FITTERS`)."""

    def __init__(self, config: FlorenceDetectionConfig):
        super().__init__()
        channels, groups = config.fpn_channels, config.dyhead_norm_groups
        # 18 offsets (dy, dx) + 9 mask logits; PyTorch's default init, as the official code (not zero as mmdet's default)
        self.spatial_conv_offset = init_scheme(nn.Conv2d(channels, 3 * 9, 3, padding=1), "torch_default")
        self.spatial_conv_high = FlorenceDyHeadSpatialConv(channels, groups, stride=1)
        self.spatial_conv_mid = FlorenceDyHeadSpatialConv(channels, groups, stride=1)
        self.spatial_conv_low = FlorenceDyHeadSpatialConv(channels, groups, stride=2)
        self.scale_attention = FlorenceScaleAttention(channels)
        self.task_attention = FlorenceDyReLU(channels)
        self.fit_offsets = OFFSET_FITTERS[config.upsampled_offset_mode]

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = []
        for level, feature in enumerate(features):
            offset_mask = self.spatial_conv_offset(feature)
            offset, mask = offset_mask[:, :18], offset_mask[:, 18:].sigmoid()
            branches = [self.spatial_conv_mid(feature, offset, mask)]
            if level > 0:
                branches.append(self.spatial_conv_low(features[level - 1], offset, mask))
            if level < len(features) - 1:
                coarser = features[level + 1]
                high_offset, high_mask = self.fit_offsets(offset, mask, *coarser.shape[-2:])
                high = self.spatial_conv_high(coarser, high_offset, high_mask)
                branches.append(F.interpolate(high, size=feature.shape[-2:], mode="bilinear", align_corners=True))
            fused = torch.stack([branch * self.scale_attention(branch) for branch in branches]).mean(dim=0)
            outputs.append(self.task_attention(fused))
        return tuple(outputs)


# ----------------------------------------------------------------------------------------------------------------------
# ATSS head
# ----------------------------------------------------------------------------------------------------------------------
class FlorenceLevelScale(nn.Module):
    """A learned scalar multiplying the box deltas of one pyramid level."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class FlorenceClosedSetClassifier(nn.Module):
    """Closed set: a 1x1 conv to `num_labels` logits (`class_embeds` is not used)."""

    def __init__(self, config: FlorenceDetectionConfig):
        super().__init__()
        self.cls_logits = init_scheme(nn.Conv2d(config.fpn_channels, config.num_labels, 1), "normal", bias="prior")

    def forward(self, feature: torch.Tensor, class_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return self.cls_logits(feature)


class FlorenceOpenVocabularyClassifier(nn.Module):
    """Open vocabulary: `exp(logit_scale) * cos(project(region), class_embedding) + bias`, any number of classes."""

    def __init__(self, config: FlorenceDetectionConfig):
        super().__init__()
        self.region_projection = init_scheme(nn.Conv2d(config.fpn_channels, config.projection_dim, 1), "normal")
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.bias = nn.Parameter(torch.zeros(()))  # starts at the foreground prior (see `_init_weights`)

    def forward(self, feature: torch.Tensor, class_embeds: torch.Tensor) -> torch.Tensor:
        regions = F.normalize(self.region_projection(feature), dim=1)
        similarity = torch.einsum("bdhw,kd->bkhw", regions, class_embeds.to(regions.dtype))
        return similarity * self.logit_scale.exp() + self.bias


class FlorenceATSSHead(nn.Module):
    """ATSS head without towers (the DyHead blocks are the towers): classifier, box deltas x level scale, centerness.

    Returns `(logits (B, N, K), deltas (B, N, 4), centerness (B, N))` over all levels, level-major then row-major."""

    def __init__(self, config: FlorenceDetectionConfig):
        super().__init__()
        classifier = FlorenceOpenVocabularyClassifier if config.is_open_vocabulary else FlorenceClosedSetClassifier
        self.classifier = classifier(config)
        self.bbox_pred = init_scheme(nn.Conv2d(config.fpn_channels, 4, 1), "normal")
        self.centerness = init_scheme(nn.Conv2d(config.fpn_channels, 1, 1), "normal")
        self.scales = nn.ModuleList(FlorenceLevelScale() for _ in range(config.num_levels))

    def forward(self, features, class_embeds: torch.Tensor | None = None):
        logits, deltas, centerness = [], [], []
        for feature, scale in zip(features, self.scales):
            logits.append(self.classifier(feature, class_embeds).flatten(2).transpose(1, 2))
            deltas.append(scale(self.bbox_pred(feature)).flatten(2).transpose(1, 2))
            centerness.append(self.centerness(feature).flatten(1))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1), torch.cat(centerness, dim=1)


# ----------------------------------------------------------------------------------------------------------------------
# Anchors, box coding, ATSS assignment and the loss
# ----------------------------------------------------------------------------------------------------------------------
def make_anchors(level_shapes, strides, anchor_scale: float, device, dtype=torch.float32) -> torch.Tensor:
    """`(N, 4)` xyxy square anchors of side `anchor_scale * stride`, one per location, centred at
    `((x + 0.5) * stride, (y + 0.5) * stride)`; level-major then row-major, the order of the head's outputs."""
    anchors = []
    for (height, width), stride in zip(level_shapes, strides):
        ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * stride
        xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)
        half = anchor_scale * stride / 2
        anchors.append(torch.cat([centres - half, centres + half], dim=1))
    return torch.cat(anchors, dim=0)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor, weights) -> torch.Tensor:
    """Anchor deltas `(dx, dy, dw, dh)` (scaled by `weights`) -> xyxy boxes, as the R-CNN/ATSS box coder."""
    wx, wy, ww, wh = weights
    sizes = anchors[..., 2:] - anchors[..., :2]
    centres = anchors[..., :2] + 0.5 * sizes
    dxy = deltas[..., :2] / deltas.new_tensor([wx, wy])
    dwh = (deltas[..., 2:] / deltas.new_tensor([ww, wh])).clamp(max=BOX_SCALE_CLAMP)
    pred_centres = dxy * sizes + centres
    pred_sizes = dwh.exp() * sizes
    return torch.cat([pred_centres - 0.5 * pred_sizes, pred_centres + 0.5 * pred_sizes], dim=-1)


def atss_assign(anchors, gt_boxes, level_counts, topk: int, center_sampling: bool) -> torch.Tensor:
    """ATSS (Zhang et al., 2020): index of the object each anchor is assigned to, -1 for background.

    For every object: the `topk` anchors of each level nearest its centre are candidates; those with IoU at least
    mean + std of the candidates' IoUs (and, with `center_sampling`, their centre inside the box) are positives; an
    anchor positive for several objects goes to the one it overlaps most."""
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if num_gt == 0:
        return torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    ious = box_iou(anchors, gt_boxes)
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    distances = torch.cdist(anchor_centres, (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2)
    candidates, start = [], 0
    for count in level_counts:
        nearest = distances[start : start + count].topk(min(topk, count), dim=0, largest=False).indices
        candidates.append(nearest + start)
        start += count
    candidates = torch.cat(candidates, dim=0)  # (K, M)
    candidate_ious = ious.gather(0, candidates)
    threshold = candidate_ious.mean(dim=0) + torch.nan_to_num(candidate_ious.std(dim=0))
    positive = candidate_ious >= threshold
    if center_sampling:
        centres = anchor_centres[candidates]  # (K, M, 2)
        margins = torch.cat([centres - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - centres], dim=-1)
        positive &= margins.amin(dim=-1) > 0.01
    gt_index = torch.arange(num_gt, device=anchors.device).expand_as(candidates)
    overlaps = torch.full_like(ious, -1.0)
    overlaps[candidates[positive], gt_index[positive]] = ious[candidates[positive], gt_index[positive]]
    best, matched = overlaps.max(dim=1)
    return torch.where(best >= 0, matched, torch.full_like(matched, -1))


def centerness_targets(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS centerness of points inside their boxes: sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))."""
    left, top = points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1]
    right, bottom = boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]
    horizontal = torch.minimum(left, right) / torch.maximum(left, right).clamp(min=1e-6)
    vertical = torch.minimum(top, bottom) / torch.maximum(top, bottom).clamp(min=1e-6)
    return (horizontal.clamp(min=0) * vertical.clamp(min=0)).sqrt()


class FlorenceATSSLoss(nn.Module):
    """ATSS training loss: focal classification over all anchors / positives, GIoU of decoded positive boxes
    weighted by their centerness targets / the targets' sum, centerness BCE / positives."""

    def __init__(self, config: FlorenceDetectionConfig):
        super().__init__()
        self.config = config

    def forward(self, logits, deltas, centerness, anchors, level_counts, targets):
        """`targets`: per image, `(class_labels (n,), boxes (n, 4) xyxy in input pixels)`."""
        config = self.config
        class_targets = torch.zeros_like(logits)
        positive_deltas, positive_anchors, positive_ctr, matched_boxes = [], [], [], []
        for image, (labels, boxes) in enumerate(targets):
            matched = atss_assign(anchors, boxes, level_counts, config.atss_topk, config.center_sampling)
            positive = (matched >= 0).nonzero().squeeze(1)
            class_targets[image, positive, labels[matched[positive]]] = 1.0
            positive_deltas.append(deltas[image, positive])
            positive_anchors.append(anchors[positive])
            positive_ctr.append(centerness[image, positive])
            matched_boxes.append(boxes[matched[positive]])
        num_positive = max(sum(len(b) for b in matched_boxes), 1)
        loss_cls = sigmoid_focal_loss(
            logits.float(), class_targets.float(), alpha=config.focal_alpha, gamma=config.focal_gamma, reduction="sum"
        ) / num_positive
        positive_anchors, matched_boxes = torch.cat(positive_anchors), torch.cat(matched_boxes).float()
        predicted = decode_boxes(torch.cat(positive_deltas).float(), positive_anchors, config.box_coder_weights)
        ctr_logits = torch.cat(positive_ctr).float()
        if len(matched_boxes) == 0:  # no object in the batch: background only (zero terms that keep the graph)
            loss_box = loss_centerness = predicted.sum() * 0.0 + ctr_logits.sum() * 0.0
        else:
            ctr_targets = centerness_targets((positive_anchors[:, :2] + positive_anchors[:, 2:]) / 2, matched_boxes)
            giou = generalized_box_iou_loss(predicted, matched_boxes, reduction="none")
            loss_box = (giou * ctr_targets).sum() / ctr_targets.sum().clamp(min=1e-6)
            loss_centerness = F.binary_cross_entropy_with_logits(ctr_logits, ctr_targets, reduction="sum") / num_positive
        loss = (config.class_loss_weight * loss_cls + config.giou_loss_weight * loss_box
                + config.centerness_loss_weight * loss_centerness)
        return loss, {"loss_cls": loss_cls, "loss_box": loss_box, "loss_centerness": loss_centerness}


# ----------------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------------
class FlorenceDetectionPreTrainedModel(FlorencePreTrainedBase):
    config_class = FlorenceDetectionConfig
    base_model_prefix = "florence_detection"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _no_split_modules = ["FlorenceVisionLayer", "Florence2VisionBlock", "FlorenceTextLayer", "FlorenceDyHeadBlock"]

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """`set_attn_implementation` works: the only dot-product attention is the towers' (CoSwin, text), which picks
        its kernel per call from `ALL_ATTENTION_FUNCTIONS`; DyHead's scale/spatial/task "attentions" are not
        attention kernels (Transformers' source heuristic takes `FlorenceScaleAttention` for one)."""
        return True

    @torch.no_grad()
    def _init_weights(self, module):
        """The detector's own layers (the towers keep their own init), each as its `init_scheme` records: FPN convs
        Kaiming-uniform(a=1) with zero bias (detectron2); DyHead attention and head convs normal(0, 0.01) with zero
        bias, the classifier's bias at the foreground prior; the offset conv PyTorch's default (as the official code);
        deformable convs uniform(+-1/sqrt(fan_in)) with zero bias; level scales 1; norms at identity."""
        prior_bias = -math.log((1 - self.config.prior_prob) / self.config.prior_prob)
        scheme = getattr(module, "init_scheme", None)
        if scheme is not None:
            fan_in = module.weight[0].numel()
            if scheme == "c2_xavier":
                init.kaiming_uniform_(module.weight, a=1)
            elif scheme == "normal":
                init.normal_(module.weight, std=self.config.initializer_range)
            elif scheme == "fan_in":
                init.normal_(module.weight, std=fan_in**-0.5)
            else:  # torch_default
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                if scheme == "torch_default":
                    init.uniform_(module.bias, -(fan_in**-0.5), fan_in**-0.5)
                else:
                    init.constant_(module.bias, prior_bias if module.init_bias == "prior" else module.init_bias)
        elif isinstance(module, FlorenceModulatedDeformConv):
            bound = module.weight[0].numel() ** -0.5
            init.uniform_(module.weight, -bound, bound)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, FlorenceOpenVocabularyClassifier):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            init.constant_(module.bias, prior_bias)
        elif isinstance(module, FlorenceLevelScale):
            init.ones_(module.scale)
        elif isinstance(module, FlorenceForObjectDetection) and module.class_embeddings is not None:
            init.zeros_(module.class_embeddings)


class FlorenceForObjectDetection(FlorenceDetectionPreTrainedModel):
    """CoSwin (or DaViT) + FPN + Dynamic Head + ATSS detector, closed-set or open-vocabulary (see the module
    docstring).

    Open vocabulary: pass the class names tokenised as `input_ids` (`(K, L)`, or `(K, T, L)` for T prompt templates
    per class, averaged) or precomputed `class_embeds`; without either, the class embeddings stored with the model
    (`set_class_names`) are used, so `pipeline("object-detection")` serves its `id2label` too."""

    def __init__(self, config: FlorenceDetectionConfig):
        if not config.is_open_vocabulary and config.num_labels < 1:
            raise ValueError(f"A closed-set detector needs at least one class, got num_labels={config.num_labels}: "
                             "set num_labels (or id2label), or give text_config for an open-vocabulary detector")
        super().__init__(config)
        vision_config = config.vision_config
        if config.vision_tower == "davit":
            # The backbone returns the maps of `out_features` only (its config was built with them).
            self.vision_model = FlorenceDaViTBackbone._from_config(vision_config)
            self._map_stages, eps = tuple(config.out_features), DAVIT_LAYER_NORM_EPS
        else:
            self.vision_model = FlorenceVisionModel._from_config(vision_config)
            self._map_stages, eps = STAGE_NAMES, vision_config.layer_norm_eps
        stage_channels = dict(zip(STAGE_NAMES, vision_config.stage_dims))
        self.hidden_states_norms = nn.ModuleDict(
            {stage: nn.LayerNorm(stage_channels[stage], eps=eps) for stage in config.out_features}
        )
        self.fpn = FlorenceDetectionFPN([stage_channels[stage] for stage in config.out_features], config.fpn_channels,
                                       config.relu_before_p7)
        self.dyhead = nn.ModuleList(FlorenceDyHeadBlock(config) for _ in range(config.num_dyhead_blocks))
        self.head = FlorenceATSSHead(config)
        self.atss_loss = FlorenceATSSLoss(config)
        if config.is_open_vocabulary:
            self.text_model = FlorenceTextModel._from_config(config.text_config)
            self.text_projection = init_scheme(
                nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False), "fan_in"
            )
            self.register_buffer("class_embeddings", torch.zeros(config.num_labels, config.projection_dim))
        else:
            self.text_model = self.text_projection = self.class_embeddings = None
        self.post_init()
        if config.is_open_vocabulary and config.freeze_text_model:
            self.freeze_text_model()

    # ------------------------------------------------------------------------------------------------------------------
    # Construction from a pretrained Florence model
    # ------------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_florence(cls, florence_model_or_folder, open_vocabulary: bool | None = None, text_source=None,
                      **config_overrides):
        """A detector on the image tower of a pretrained Florence (an instance, a saved folder or a Hub name):

        - a two-tower `FlorenceModel`: its CoSwin is copied; it is also the text source;
        - a Florence-2 model or folder (ours with the DaViT tower, Transformers' `florence2` such as
          `florence-community/Florence-2-base`, or a `FlorenceDaViTBackbone`): its DaViT is copied exactly. Florence-2
          has no contrastive text tower (its BART is a decoder's encoder), so the detector is closed-set
          (`num_labels` / `id2label`) unless `text_source` is given.

        `text_source`: a two-tower `FlorenceModel` (or folder) whose text tower and text projection the detector
        takes (overriding a two-tower source's own). `open_vocabulary`: None (default) = open-vocabulary when a text
        source is at hand; True copies its text tower and projection (frozen unless `freeze_text_model=False`), False
        gives a closed-set detector. `config_overrides` set detector fields (`out_features`, `fpn_channels`,
        `num_dyhead_blocks`, `id2label`, ...; `text_config` + `projection_dim` with no text source give an
        open-vocabulary detector whose text tower starts from its init). The FPN, DyHead and head start from their own
        initialisation."""
        vision_tower, vision_config, text = load_tower_sources(florence_model_or_folder, text_source)
        if open_vocabulary is None:
            open_vocabulary = text is not None or "text_config" in config_overrides
        if open_vocabulary and text is None and "text_config" not in config_overrides:
            raise ValueError("A Florence-2 folder holds no text tower for open-vocabulary detection: pass "
                             "text_source= a two-tower Florence (model or folder), or open_vocabulary=False with "
                             "num_labels/id2label")
        if open_vocabulary and text is not None:
            config_overrides.setdefault("text_config", text.config.text_config.to_dict())
            config_overrides.setdefault("projection_dim", text.config.projection_dim)
        config = FlorenceDetectionConfig(vision_config=vision_config.to_dict(), **config_overrides)
        detector = cls(config)
        detector.vision_model.load_state_dict(vision_tower.state_dict())
        if open_vocabulary and text is not None:
            detector.text_model.load_state_dict(text.text_model.state_dict())
            detector.text_projection.load_state_dict(text.text_projection.state_dict())
        return detector

    def freeze_text_model(self) -> None:
        """Stop training the text tower and its projection (they keep the pretrained text space)."""
        for module in (self.text_model, self.text_projection):
            module.requires_grad_(False)

    # ------------------------------------------------------------------------------------------------------------------
    # Class names (open vocabulary)
    # ------------------------------------------------------------------------------------------------------------------
    def get_class_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised class embeddings `(K, projection_dim)` from tokenised names: `(K, L)`, or `(K, T, L)` for T
        prompt templates per class (normalised per template, averaged, renormalised, as zero-shot classification)."""
        if self.text_model is None:
            raise ValueError("This detector is closed-set (no text_config): it cannot embed class names")
        if input_ids.ndim not in (2, 3):
            raise ValueError(f"input_ids must have shape (classes, length) or (classes, templates, length), got "
                             f"{tuple(input_ids.shape)}")
        if input_ids.shape[0] == 0:
            raise ValueError("No candidate labels: pass at least one class name")
        shape = input_ids.shape[:-1]
        flat_mask = attention_mask.reshape(-1, attention_mask.shape[-1]) if attention_mask is not None else None
        pooled = self.text_model(input_ids.reshape(-1, input_ids.shape[-1]), attention_mask=flat_mask).pooler_output
        embeds = F.normalize(self.text_projection(pooled), dim=-1).reshape(*shape, -1)
        if embeds.ndim == 3:
            embeds = F.normalize(embeds.mean(dim=1), dim=-1)
        return embeds

    @torch.no_grad()
    def set_class_names(self, names: list[str], tokenizer, templates: list[str] | None = None) -> None:
        """Store the embeddings of `names` (with prompt `templates`, e.g. ``["a photo of a {}."]``; default: the bare
        names) as the detector's classes: `id2label` follows and forward calls without text use them."""
        if not names:
            raise ValueError("No candidate labels: set_class_names needs at least one name")
        templates = templates or ["{}"]
        texts = [template.format(name) for name in names for template in templates]
        # Truncated to the text tower's positions (end-of-text id kept last): long class names encode, not overflow.
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt",
                           max_length=self.config.text_config.max_position_embeddings).to(self.device)
        length = tokens["input_ids"].shape[-1]
        embeds = self.get_class_embeddings(
            tokens["input_ids"].view(len(names), len(templates), length),
            tokens["attention_mask"].view(len(names), len(templates), length),
        )
        self.class_embeddings = embeds.to(self.dtype)
        self.config.id2label = dict(enumerate(names))
        self.config.label2id = {name: index for index, name in enumerate(names)}

    # ------------------------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------------------------
    def backbone_features(self, pixel_values, output_hidden_states, output_attentions):
        """Normalised `(B, C, H, W)` maps of `out_features` and the tower's output."""
        outputs = self.vision_model(pixel_values, output_hidden_states=output_hidden_states,
                                    output_attentions=output_attentions, return_dict=True)
        maps = dict(zip(self._map_stages, outputs.feature_maps))
        features = [
            self.hidden_states_norms[stage](maps[stage].permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            for stage in self.config.out_features
        ]
        return features, outputs

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict] | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        class_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> FlorenceObjectDetectionOutput | tuple:
        r"""
        pixel_values: `(B, 3, H, W)` padded images (the detection image processor pads to `size_divisibility`).
        pixel_mask: `(B, H, W)` 1 on real pixels, 0 on padding; boxes are normalised to each image's real extent.
        labels: per image a dict with `class_labels` `(n,)` int64 and `boxes` `(n, 4)` normalised `(cx, cy, w, h)`
            (DETR's format, what the detection image processor returns); an image without objects trains as
            background. Gives the output a `loss`.
        input_ids, attention_mask: open vocabulary: the class names tokenised, `(K, L)` or `(K, T, L)`; shared by
            every image of the batch. `class_embeds`: the same as precomputed `(K, projection_dim)` embeddings.
        """
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        kwargs.pop("token_type_ids", None)
        class_embeds = self.resolve_class_embeds(input_ids, attention_mask, class_embeds)
        pixel_values = pixel_values.to(self.dtype) if pixel_values.is_floating_point() else pixel_values

        features, vision_outputs = self.backbone_features(pixel_values, output_hidden_states, output_attentions)
        features = self.fpn(features)
        for block in self.dyhead:
            features = block(*features)
        logits, deltas, centerness = self.head(features, class_embeds)

        level_shapes = [feature.shape[-2:] for feature in features]
        anchors = make_anchors(level_shapes, self.config.strides, self.config.anchor_scale, pixel_values.device)
        image_sizes = self.image_sizes(pixel_values, pixel_mask)  # (B, 2) real (height, width)
        scale = image_sizes.flip(-1).repeat(1, 2)[:, None, :].to(torch.float32)  # (B, 1, 4): w, h, w, h
        boxes = decode_boxes(deltas.float(), anchors, self.config.box_coder_weights)
        pred_boxes = (box_convert(boxes, "xyxy", "cxcywh") / scale).to(deltas.dtype)

        loss = loss_dict = None
        if labels is not None:
            targets = self.prepare_targets(labels, image_sizes, num_classes=logits.shape[-1])
            level_counts = [int(h * w) for h, w in level_shapes]
            loss, loss_dict = self.atss_loss(logits, deltas, centerness, anchors, level_counts, targets)

        output = FlorenceObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            centerness=centerness,
            feature_maps=tuple(features) if output_hidden_states else None,
            hidden_states=vision_outputs.hidden_states if output_hidden_states else None,
            attentions=vision_outputs.attentions if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()

    def resolve_class_embeds(self, input_ids, attention_mask, class_embeds) -> torch.Tensor | None:
        if not self.config.is_open_vocabulary:
            if input_ids is not None or class_embeds is not None:
                raise ValueError("This detector is closed-set (no text_config): it takes no input_ids/class_embeds; "
                                 "its classes are config.id2label")
            return None
        if class_embeds is not None:
            if class_embeds.ndim != 2 or class_embeds.shape[0] == 0:
                raise ValueError(f"class_embeds must have shape (classes >= 1, {self.config.projection_dim}), got "
                                 f"{tuple(class_embeds.shape)}")
            return F.normalize(class_embeds, dim=-1)
        if input_ids is not None:
            return self.get_class_embeddings(input_ids, attention_mask)
        return self.class_embeddings

    @staticmethod
    def image_sizes(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
        """`(B, 2)` (height, width) of each image's real pixels: from `pixel_mask`, else the whole input."""
        if pixel_mask is None:
            return torch.tensor(pixel_values.shape[-2:], device=pixel_values.device).expand(pixel_values.shape[0], 2)
        if pixel_mask.shape != (pixel_values.shape[0], *pixel_values.shape[-2:]):
            raise ValueError(f"pixel_mask must have shape (batch, height, width) = "
                             f"{(pixel_values.shape[0], *pixel_values.shape[-2:])}, got {tuple(pixel_mask.shape)}")
        mask = pixel_mask.bool()
        return torch.stack([mask.any(dim=2).sum(dim=1), mask.any(dim=1).sum(dim=1)], dim=1).clamp(min=1)

    def prepare_targets(self, labels, image_sizes: torch.Tensor, num_classes: int):
        """DETR-format labels -> per image `(class_labels, xyxy boxes in input pixels)`, with clear errors."""
        if len(labels) != image_sizes.shape[0]:
            raise ValueError(f"labels has {len(labels)} entries for a batch of {image_sizes.shape[0]} images: give one "
                             "dict (class_labels, boxes) per image, with empty tensors for an image without objects")
        targets = []
        for image, (target, (height, width)) in enumerate(zip(labels, image_sizes.tolist())):
            missing = {"class_labels", "boxes"} - set(target)
            if missing:
                raise ValueError(f"labels[{image}] lacks {sorted(missing)}: each entry needs class_labels (n,) and "
                                 "boxes (n, 4) normalised (cx, cy, w, h)")
            classes = torch.as_tensor(target["class_labels"], device=self.device).long().reshape(-1)
            boxes = torch.as_tensor(target["boxes"], device=self.device, dtype=torch.float32).reshape(-1, 4)
            if len(classes) != len(boxes):
                raise ValueError(f"labels[{image}] has {len(classes)} class_labels but {len(boxes)} boxes")
            if not is_tracing() and len(classes):
                if classes.min() < 0 or classes.max() >= num_classes:
                    raise ValueError(f"labels[{image}] has class_labels {classes.tolist()} outside [0, {num_classes - 1}] "
                                     f"(the {num_classes} classes of this call)")
                if not torch.isfinite(boxes).all() or (boxes[:, 2:] <= 0).any():
                    raise ValueError(f"labels[{image}] has boxes with non-positive or non-finite size: {boxes.tolist()}")
                corners = box_convert(boxes, "cxcywh", "xyxy")
                if (corners[:, :2] < -0.01).any() or (corners[:, 2:] > 1.01).any():
                    raise ValueError(f"labels[{image}] has boxes outside the image (normalised corners {corners.tolist()}"
                                     "; boxes are (cx, cy, w, h) relative to the image size, in [0, 1])")
            xyxy = box_convert(boxes, "cxcywh", "xyxy").clamp(0, 1) * boxes.new_tensor([width, height, width, height])
            targets.append((classes, xyxy))
        return targets


__all__ = [
    "FlorenceDetectionPreTrainedModel",
    "FlorenceForObjectDetection",
    "FlorenceObjectDetectionOutput",
    "atss_assign",
    "decode_boxes",
    "make_anchors",
]
