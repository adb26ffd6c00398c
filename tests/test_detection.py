"""FlorenceForObjectDetection: config validation, ATSS assignment, the DyHead block against a from-the-paper
reference, loss and label checks, the detection image processor and post-processing, COCO mAP, and end to end:
a tiny detector overfits a few Shapes images and serves both detection pipelines from a saved folder."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import box_iou

import modeling_florence as mf
from modeling_florence.evaluation_florence_detection import coco_detection_metrics, dataset_to_coco, detections_to_coco
from modeling_florence.modeling_florence_detection import (
    FlorenceDyHeadBlock,
    atss_assign,
    decode_boxes,
    flatten_offsets,
    make_anchors,
)
from modeling_florence.training_florence_detection import DetectionCollator, evaluate_detection, predict
from tests.test_common import detection_labels, tiny_detection_config, tiny_text_config


def open_vocabulary_config(**overrides):
    return tiny_detection_config(text_config=tiny_text_config().to_dict(), projection_dim=24, **overrides)


# ----------------------------------------------------------------------------------------------------------------------
# Config and presets
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [("fpn_channels", 0), ("num_dyhead_blocks", -1), ("upsampled_offset_mode", "cuda"), ("out_features", ["stage5"]),
     ("out_features", ["stage2", "stage4"]), ("atss_topk", 0), ("focal_alpha", 1.5), ("nms_iou_threshold", -0.1),
     ("prior_prob", 1.0), ("dyhead_norm_groups", 5), ("box_coder_weights", [1.0, 1.0, 1.0]), ("anchor_scale", 0),
     ("max_detections", 0), ("giou_loss_weight", -1.0)],
)
def test_invalid_config_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_detection_config(**{field: value})


def test_open_vocabulary_config_needs_projection_dim_and_serialises():
    with pytest.raises(ValueError, match="projection_dim"):
        tiny_detection_config(text_config=tiny_text_config().to_dict())
    config = open_vocabulary_config()
    reloaded = mf.FlorenceDetectionConfig.from_dict(config.to_dict())
    assert reloaded.is_open_vocabulary and reloaded.text_config.hidden_size == 32 and reloaded.projection_dim == 24
    closed = mf.FlorenceDetectionConfig.from_dict(tiny_detection_config().to_dict())
    assert closed.text_config is None and not closed.is_open_vocabulary


def test_presets_build_the_papers_head():
    tiny = mf.load_preset("florence-detection-tiny")
    assert isinstance(tiny, mf.FlorenceDetectionConfig) and tiny.is_open_vocabulary
    assert tiny.strides == [8, 16, 32, 64, 128]
    assert tiny.vision_config.to_dict()["depths"] == mf.load_preset("florence-tiny").vision_config.depths
    base = mf.load_preset("florence-detection-base")
    assert (base.fpn_channels, base.num_dyhead_blocks, base.atss_topk, base.anchor_scale) == (256, 6, 9, 8.0)
    assert not base.is_open_vocabulary and base.num_labels == 80  # COCO; open vocabulary comes from from_florence
    assert base.vision_config.embed_dim == 128 and base.vision_config.depths == [2, 2, 18, 2]
    with torch.device("meta"):
        model = mf.FlorenceForObjectDetection(base)
    block = sum(p.numel() for p in model.dyhead[0].parameters())
    # 3 DCNs (256*256*9 + 256) + 3 GroupNorms + offset conv (27*256*9 + 27) + scale attn (257) + DyReLU (256*64+64 +
    # 64*1024+1024): the paper's head.
    assert block == 3 * (256 * 256 * 9 + 256 + 512) + 27 * 256 * 9 + 27 + 257 + 256 * 64 + 64 + 64 * 1024 + 1024


# ----------------------------------------------------------------------------------------------------------------------
# ATSS assignment against a loop-by-loop reference
# ----------------------------------------------------------------------------------------------------------------------
def reference_atss(anchors, gt, level_counts, topk):
    anchors, gt = anchors.double().numpy(), gt.double().numpy()
    ious = box_iou(torch.from_numpy(anchors), torch.from_numpy(gt)).numpy()
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = np.full(len(anchors), -1.0)
    matched = np.full(len(anchors), -1)
    for j, box in enumerate(gt):
        distance = np.linalg.norm(centres - (box[:2] + box[2:]) / 2, axis=1)
        candidates, start = [], 0
        for count in level_counts:
            candidates += list(start + np.argsort(distance[start : start + count], kind="stable")[:topk])
            start += count
        candidate_ious = ious[candidates, j]
        threshold = candidate_ious.mean() + candidate_ious.std(ddof=1)
        for anchor in candidates:
            x, y = centres[anchor]
            inside = min(x - box[0], y - box[1], box[2] - x, box[3] - y) > 0.01
            if ious[anchor, j] >= threshold and inside and ious[anchor, j] > best[anchor]:
                best[anchor], matched[anchor] = ious[anchor, j], j
    return matched


@pytest.mark.parametrize("seed", range(5))
def test_atss_assignment_matches_the_algorithm(seed):
    generator = torch.Generator().manual_seed(seed)
    shapes, strides = [(16, 16), (8, 8), (4, 4)], [8, 16, 32]
    anchors = make_anchors(shapes, strides, anchor_scale=4.0, device="cpu")
    corners = torch.rand(6, 2, generator=generator) * 100
    sizes = torch.rand(6, 2, generator=generator) * 60 + 6
    gt = torch.cat([corners, (corners + sizes).clamp(max=127.9)], dim=1)
    counts = [h * w for h, w in shapes]
    matched = atss_assign(anchors, gt, counts, topk=9, center_sampling=True)
    np.testing.assert_array_equal(matched.numpy(), reference_atss(anchors, gt, counts, topk=9))
    assert (matched >= 0).sum() >= 6  # every object gets positives here
    assert (atss_assign(anchors, gt[:0], counts, 9, True) == -1).all()  # no objects: all background


def test_anchors_and_box_decoding():
    anchors = make_anchors([(2, 3)], [16], anchor_scale=8.0, device="cpu")
    assert anchors.shape == (6, 4)
    torch.testing.assert_close(anchors[4], torch.tensor([24.0 - 64, 24 - 64, 24 + 64, 24 + 64]))  # row 1, column 1
    deltas = torch.tensor([[10.0 * 0.5, 0.0, 5.0 * float(np.log(0.5)), 0.0]])  # shift by half a width, halve the width
    box = decode_boxes(deltas, anchors[4:5], (10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(box, torch.tensor([[24 + 64 - 32.0, 24 - 64, 24 + 64 + 32, 24 + 64]]))


# ----------------------------------------------------------------------------------------------------------------------
# A DyHead block against a from-the-paper reference
# ----------------------------------------------------------------------------------------------------------------------
def reference_deform_conv(x, offset, mask, weight, bias, stride):
    """DCNv2 from its definition: y(p) = sum_k w_k * m_k(p) * x(p * stride - 1 + p_k + dp_k), bilinear with zeros
    outside, written with grid_sample (sampling point (y, x) at exactly the pixel grid: align_corners=True)."""
    batch, _, height, width = x.shape
    out_h, out_w = offset.shape[-2:]
    ys = torch.arange(out_h, dtype=x.dtype)[:, None] * stride - 1
    xs = torch.arange(out_w, dtype=x.dtype)[None, :] * stride - 1
    out = bias[None, :, None, None].expand(batch, -1, out_h, out_w).clone()
    for k in range(9):
        ky, kx = divmod(k, 3)
        sample_y = ys + ky + offset[:, 2 * k]
        sample_x = xs + kx + offset[:, 2 * k + 1]
        grid = torch.stack([sample_x / (width - 1) * 2 - 1, sample_y / (height - 1) * 2 - 1], dim=-1)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out = out + torch.einsum("oc,bchw->bohw", weight[:, :, ky, kx], sampled * mask[:, k : k + 1])
    return out


def reference_dyhead_block(block, features, fit):
    """Dai et al. 2021, Eq. 2-5 as the official code orders them: spatial-aware (DCNv2 on levels L-1, L, L+1 with
    offsets/mask from level L), scale-aware (hard-sigmoid of a 1x1 conv on the pooled branch), mean, task-aware DyReLU."""
    def branch(module, x, offset, mask, stride):
        y = reference_deform_conv(x, offset, mask, module.conv.weight, module.conv.bias, stride)
        return F.group_norm(y, module.norm.num_groups, module.norm.weight, module.norm.bias, module.norm.eps)

    def scale_weight(x):
        pooled = x.mean(dim=(2, 3), keepdim=True)
        value = F.relu(F.conv2d(pooled, block.scale_attention.conv.weight, block.scale_attention.conv.bias))
        return torch.clamp((value + 3) / 6, 0, 1)

    outputs = []
    for level, x in enumerate(features):
        offset_mask = F.conv2d(x, block.spatial_conv_offset.weight, block.spatial_conv_offset.bias, padding=1)
        offset, mask = offset_mask[:, :18], torch.sigmoid(offset_mask[:, 18:])
        branches = [branch(block.spatial_conv_mid, x, offset, mask, 1)]
        if level > 0:
            branches.append(branch(block.spatial_conv_low, features[level - 1], offset, mask, 2))
        if level < len(features) - 1:
            coarse = features[level + 1]
            high_offset, high_mask = fit(offset, mask, *coarse.shape[-2:])
            high = branch(block.spatial_conv_high, coarse, high_offset, high_mask, 1)
            branches.append(F.interpolate(high, size=x.shape[-2:], mode="bilinear", align_corners=True))
        fused = sum(b * scale_weight(b) for b in branches) / len(branches)
        theta = block.task_attention
        hidden = F.relu(F.linear(fused.mean(dim=(2, 3)), theta.reduce.weight, theta.reduce.bias))
        a1, b1, a2, b2 = torch.clamp((F.linear(hidden, theta.expand.weight, theta.expand.bias) + 3) / 6, 0, 1).chunk(4, 1)
        pieces = [(a1 - 0.5) * 2 + 1, b1 - 0.5, (a2 - 0.5) * 2, b2 - 0.5]
        a1, b1, a2, b2 = (p[:, :, None, None] for p in pieces)
        outputs.append(torch.maximum(fused * a1 + b1, fused * a2 + b2))
    return outputs


@pytest.mark.parametrize("mode", ["mmdet", "detectron2"])
def test_dyhead_block_matches_the_paper_reference(mode):
    torch.manual_seed(0)
    config = tiny_detection_config(upsampled_offset_mode=mode)
    block = FlorenceDyHeadBlock(config).double()
    with torch.no_grad():  # non-trivial attention, offsets of a few pixels
        for param in block.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    features = [torch.randn(2, 16, size, 4 * size // 3, dtype=torch.float64) for size in (12, 6, 3)]  # 12x16 .. 3x4
    fit = {"mmdet": lambda o, m, h, w: (o[:, :, :h, :w], m[:, :, :h, :w]), "detectron2": flatten_offsets}[mode]
    expected = reference_dyhead_block(block, features, fit)
    actual = block(*features)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-9, rtol=1e-7)


def test_detectron2_offsets_are_read_flat():
    offset = torch.arange(2 * 18 * 4 * 6, dtype=torch.float32).view(2, 18, 4, 6)
    mask = torch.arange(2 * 9 * 4 * 6, dtype=torch.float32).view(2, 9, 4, 6)
    fitted, fitted_mask = flatten_offsets(offset, mask, 2, 3)
    assert fitted.shape == (2, 18, 2, 3) and fitted_mask.shape == (2, 9, 2, 3)
    torch.testing.assert_close(fitted[1].flatten(), offset[1].flatten()[: 18 * 6])
    torch.testing.assert_close(fitted_mask[0].flatten(), mask[0].flatten()[: 9 * 6])


# ----------------------------------------------------------------------------------------------------------------------
# Loss and labels
# ----------------------------------------------------------------------------------------------------------------------
def test_images_without_objects_train_as_background():
    torch.manual_seed(0)
    model = mf.FlorenceForObjectDetection(tiny_detection_config())
    empty = {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    output = model(torch.randn(2, 3, 64, 64), labels=[empty, empty])
    assert output.loss_dict["loss_box"] == 0 and output.loss_dict["loss_centerness"] == 0
    assert output.loss_dict["loss_cls"] > 0 and torch.isfinite(output.loss)
    output.loss.backward()
    assert model.head.classifier.cls_logits.bias.grad.abs().sum() > 0  # pushed towards background


def test_loss_terms_and_their_weights():
    torch.manual_seed(0)
    model = mf.FlorenceForObjectDetection(tiny_detection_config())
    pixels = torch.randn(2, 3, 64, 64)
    output = model(pixels, labels=detection_labels(2))
    terms = output.loss_dict
    assert all(value > 0 for value in terms.values())
    torch.testing.assert_close(output.loss, terms["loss_cls"] + 2.0 * terms["loss_box"] + terms["loss_centerness"])
    model.config.giou_loss_weight = 0.0
    torch.testing.assert_close(model(pixels, labels=detection_labels(2)).loss, terms["loss_cls"] + terms["loss_centerness"])


@pytest.mark.parametrize(
    "labels, match",
    [
        ([{"class_labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}], "outside \\[0, 2\\]"),
        ([{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.2]])}], "non-positive"),
        ([{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[1.2, 0.5, 0.2, 0.2]])}], "outside the image"),
        ([{"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}], "2 class_labels"),
        ([{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}], "lacks"),
        ([], "0 entries for a batch of 1"),
    ],
)
def test_bad_labels_raise_naming_the_problem(labels, match):
    model = mf.FlorenceForObjectDetection(tiny_detection_config())
    with pytest.raises(ValueError, match=match):
        model(torch.randn(1, 3, 64, 64), labels=labels)


def test_class_inputs_are_checked():
    closed = mf.FlorenceForObjectDetection(tiny_detection_config())
    with pytest.raises(ValueError, match="closed-set"):
        closed(torch.randn(1, 3, 64, 64), input_ids=torch.tensor([[49406, 320, 49407]]))
    open_model = mf.FlorenceForObjectDetection(open_vocabulary_config())
    with pytest.raises(ValueError, match="No candidate labels"):
        open_model(torch.randn(1, 3, 64, 64), input_ids=torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="No candidate labels"):
        open_model.set_class_names([], tokenizer=None)


def test_open_vocabulary_accepts_any_class_list_and_template_ensembles():
    torch.manual_seed(0)
    model = mf.FlorenceForObjectDetection(open_vocabulary_config()).eval()
    tokenizer = mf.FlorenceProcessor.from_defaults().tokenizer
    pixels = torch.randn(1, 3, 64, 64)
    names = ["red circle", "blue star", "green cross"]
    tokens = tokenizer(names, padding=True, return_tensors="pt")
    with torch.no_grad():
        three = model(pixels, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        one = model(pixels, input_ids=tokens["input_ids"][1:2], attention_mask=tokens["attention_mask"][1:2])
    assert three.logits.shape[-1] == 3 and one.logits.shape[-1] == 1
    torch.testing.assert_close(one.logits[..., 0], three.logits[..., 1], atol=1e-5, rtol=1e-5)  # classes independent
    # (K, T, L) input: the normalised mean of the per-template embeddings, as zero-shot classification
    templates = ["a photo of a {}.", "a {}."]
    texts = tokenizer([t.format(n) for n in names for t in templates], padding=True, return_tensors="pt")
    ids, mask = texts["input_ids"].view(3, 2, -1), texts["attention_mask"].view(3, 2, -1)
    with torch.no_grad():
        ensemble = model.get_class_embeddings(ids, mask)
        singles = torch.stack([model.get_class_embeddings(ids[:, t], mask[:, t]) for t in range(2)], dim=1)
    torch.testing.assert_close(ensemble, F.normalize(singles.mean(1), dim=-1))
    model.set_class_names(names, tokenizer, templates=templates)
    assert model.config.id2label == {0: "red circle", 1: "blue star", 2: "green cross"}
    torch.testing.assert_close(model.class_embeddings, ensemble)


def test_from_florence_copies_the_towers_and_freezes_text(tmp_path):
    from tests.test_common import tiny_vision_config

    vision = tiny_vision_config(depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4]).to_dict()
    florence = mf.FlorenceModel(mf.FlorenceConfig(vision_config=vision, text_config=tiny_text_config().to_dict(),
                                                  projection_dim=24))
    florence.save_pretrained(tmp_path / "florence")
    detector = mf.FlorenceForObjectDetection.from_florence(tmp_path / "florence", fpn_channels=16,
                                                          dyhead_norm_groups=4, num_dyhead_blocks=1)
    for key, value in florence.vision_model.state_dict().items():
        assert torch.equal(detector.vision_model.state_dict()[key], value), key
    assert torch.equal(detector.text_projection.weight, florence.text_projection.weight)
    assert not any(p.requires_grad for p in detector.text_model.parameters())
    assert not detector.text_projection.weight.requires_grad
    assert all(p.requires_grad for p in detector.vision_model.parameters())
    closed = mf.FlorenceForObjectDetection.from_florence(florence, open_vocabulary=False, num_labels=5,
                                                        fpn_channels=16, dyhead_norm_groups=4)
    assert closed.text_model is None and closed.config.num_labels == 5
    # the detector folder gives back the towers (CLIP-style composite loading)
    detector.save_pretrained(tmp_path / "detector")
    tower = mf.FlorenceVisionModel.from_pretrained(tmp_path / "detector")
    for key, value in florence.vision_model.state_dict().items():
        assert torch.equal(tower.state_dict()[key], value), key


# ----------------------------------------------------------------------------------------------------------------------
# Processor and post-processing
# ----------------------------------------------------------------------------------------------------------------------
def test_processor_resizes_pads_and_converts_coco_annotations():
    processor = mf.FlorenceDetectionImageProcessor(size={"shortest_edge": 48, "longest_edge": 80}, size_divisibility=32)
    images = [Image.new("RGB", (100, 50), "red"), Image.new("RGB", (30, 60), "blue")]
    annotations = [
        {"image_id": 7, "annotations": [{"bbox": [10, 5, 20, 10], "category_id": 2},
                                        {"bbox": [90, 40, 20, 20], "category_id": 0}]},  # clipped at the corner
        {"image_id": 8, "annotations": []},
    ]
    batch = processor(images=images, annotations=annotations, return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 96, 96)  # 80x40 and 40x80 (long sides capped at 80), padded
    assert batch["pixel_mask"][0].sum() == 40 * 80 and batch["pixel_mask"][1, :80, :40].all()
    assert batch["pixel_mask"][0, :40, :80].all() and not batch["pixel_mask"][0, 40:].any()
    first, second = batch["labels"]
    assert first["class_labels"].tolist() == [2, 0] and first["image_id"].item() == 7
    torch.testing.assert_close(first["boxes"][0], torch.tensor([0.2, 0.2, 0.2, 0.2]))
    torch.testing.assert_close(first["boxes"][1], torch.tensor([0.95, 0.9, 0.1, 0.2]))
    assert second["boxes"].shape == (0, 4) and second["class_labels"].shape == (0,)


def test_processor_pads_small_images_up_to_the_multiple():
    processor = mf.FlorenceDetectionImageProcessor(size={"shortest_edge": 20, "longest_edge": 40})
    batch = processor(images=Image.new("RGB", (12, 10)), return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, 128, 128) and batch["pixel_mask"].sum() == 20 * 24


@pytest.mark.parametrize(
    "annotation, match",
    [
        ({"bbox": [1, 1, 0, 5], "category_id": 0}, "non-positive"),
        ({"bbox": [1, 1, -3, 5], "category_id": 0}, "non-positive"),
        ({"bbox": [200, 1, 5, 5], "category_id": 0}, "outside its 40x30 image"),
        ({"bbox": [1, 1, 5, 5]}, "category_id"),
    ],
)
def test_processor_rejects_bad_boxes(annotation, match):
    processor = mf.FlorenceDetectionImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    with pytest.raises(ValueError, match=match):
        processor(images=Image.new("RGB", (40, 30)), annotations={"image_id": 0, "annotations": [annotation]})


def test_processor_rejects_empty_inputs():
    processor = mf.FlorenceDetectionImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    with pytest.raises(ValueError, match="empty|No images"):
        processor(images=np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="No images"):
        processor(images=[])
    with pytest.raises(ValueError, match="2 annotations for 1 images"):
        processor(images=Image.new("RGB", (40, 30)), annotations=[{"annotations": []}, {"annotations": []}])


def test_post_processing_scores_nms_and_pixel_boxes():
    processor = mf.FlorenceDetectionImageProcessor(nms_iou_threshold=0.6)
    big = 8.0
    logits = torch.full((1, 4, 2), -big)
    logits[0, 0, 1], logits[0, 1, 1], logits[0, 2, 0] = big, 1.0, big  # 1 duplicates 0 (same class), 2 another class
    logits[0, 3, 0] = 0.0  # sigmoid 0.5 * centerness: below the threshold below
    centerness = torch.tensor([[big, big, big, -big]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    outputs = {"logits": logits, "pred_boxes": boxes, "centerness": centerness}
    result = processor.post_process_object_detection(outputs, threshold=0.3, target_sizes=[(100, 200)])[0]
    assert result["labels"].tolist() == [1, 0]  # the duplicate is suppressed, the other class overlaps freely
    torch.testing.assert_close(result["boxes"][0], torch.tensor([80.0, 40.0, 120.0, 60.0]))
    torch.testing.assert_close(result["scores"][0], torch.sigmoid(torch.tensor(big)) ** 2)
    assert processor.post_process_object_detection(outputs, threshold=0.3, top_k=1)[0]["boxes"].shape == (1, 4)
    normalised = processor.post_process_object_detection(outputs, threshold=0.3)[0]["boxes"][0]
    torch.testing.assert_close(normalised, torch.tensor([0.4, 0.4, 0.6, 0.6]))


def test_coco_metrics_of_perfect_and_shifted_detections():
    dataset = mf.build_detection(num_train=3, num_validation=0, num_test=0, image_size=64)["train"]
    ground_truth = dataset_to_coco(dataset)
    perfect = [{"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in row["objects"]["bbox"]]),
                "scores": torch.ones(len(row["objects"]["bbox"])), "labels": torch.tensor(row["objects"]["category"])}
               for row in dataset]
    metrics = coco_detection_metrics(ground_truth, detections_to_coco(dataset["image_id"], perfect))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    wrong_class = [{**d, "labels": (d["labels"] + 1) % 8} for d in perfect]
    assert coco_detection_metrics(ground_truth, detections_to_coco(dataset["image_id"], wrong_class))["AP"] == 0.0
    assert coco_detection_metrics(ground_truth, [])["AP"] == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# End to end: a tiny detector overfits a few Shapes images; both pipelines run from its folder
# ----------------------------------------------------------------------------------------------------------------------
SHAPES_SIZE = 128


def shapes_processor(config):
    return mf.FlorenceDetectionImageProcessor.from_detection_config(
        config, size={"shortest_edge": SHAPES_SIZE, "longest_edge": SHAPES_SIZE}
    )


@pytest.fixture(scope="module")
def trained_detector(tmp_path_factory):
    """A closed-set tiny detector (8 shape classes) trained from scratch on 3 Shapes images, saved with its processor."""
    torch.manual_seed(0)
    dataset = mf.build_detection(num_train=3, num_validation=0, num_test=0, image_size=SHAPES_SIZE, seed=1)["train"]
    names = list(mf.shapes.SHAPES)
    config = tiny_detection_config(fpn_channels=32, dyhead_norm_groups=8, num_dyhead_blocks=1, num_labels=len(names),
                                   id2label=dict(enumerate(names)))
    model = mf.FlorenceForObjectDetection(config)
    processor = shapes_processor(config)
    batch = DetectionCollator(processor)(list(dataset))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(150):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    folder = tmp_path_factory.mktemp("detector")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model.eval(), processor, dataset, names, losses, folder


def test_training_overfits_a_few_shapes_images(trained_detector):
    model, processor, dataset, names, losses, _ = trained_detector
    assert np.mean(losses[-10:]) < 0.4 * np.mean(losses[:10])
    detections = predict(model, processor, dataset, threshold=0.2)
    for row, found in zip(dataset, detections):
        truth = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in row["objects"]["bbox"]])
        ious = box_iou(truth, found["boxes"])
        for index, label in enumerate(row["objects"]["category"]):
            hits = (ious[index] > 0.5) & (found["labels"] == label)
            assert hits.any(), f"{names[label]} at {truth[index].tolist()} not found: {found}"
    metrics = evaluate_detection(model, processor, dataset)
    assert metrics["AP50"] > 0.9 and metrics["AP"] > 0.5, metrics


def test_object_detection_pipeline_from_the_folder(trained_detector):
    from transformers import AutoModelForObjectDetection, pipeline

    model, _, dataset, names, _, folder = trained_detector
    assert isinstance(AutoModelForObjectDetection.from_pretrained(folder), mf.FlorenceForObjectDetection)
    row = dataset[0]
    results = pipeline("object-detection", model=str(folder))(row["image"], threshold=0.2)
    assert results and all(set(r) == {"score", "label", "box"} for r in results)
    for result in results[: len(row["objects"]["bbox"])]:
        box = result["box"]
        found = torch.tensor([[box["xmin"], box["ymin"], box["xmax"], box["ymax"]]], dtype=torch.float32)
        truth = torch.tensor([[x, y, x + w, y + h] for (x, y, w, h), c in
                              zip(row["objects"]["bbox"], row["objects"]["category"]) if names[c] == result["label"]])
        assert len(truth) and box_iou(found, truth).max() > 0.5, (result, row["objects"])


@pytest.fixture(scope="module")
def open_vocabulary_folder(tmp_path_factory):
    """An open-vocabulary tiny detector whose stored classes are three colour-shape names, saved with its image
    processor and tokenizer."""
    torch.manual_seed(0)
    config = open_vocabulary_config()
    model = mf.FlorenceForObjectDetection(config).eval()
    tokenizer = mf.FlorenceDetectionTokenizer.from_defaults()
    model.set_class_names(["red circle", "blue star", "green cross"], tokenizer)
    folder = tmp_path_factory.mktemp("open-detector")
    model.save_pretrained(folder)
    shapes_processor(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, folder


def test_zero_shot_object_detection_pipeline_scores_each_candidate_label(open_vocabulary_folder):
    from transformers import AutoModelForZeroShotObjectDetection, pipeline

    model, folder = open_vocabulary_folder
    assert isinstance(AutoModelForZeroShotObjectDetection.from_pretrained(folder), mf.FlorenceForObjectDetection)
    image = mf.build_detection(num_train=1, num_validation=0, num_test=0, image_size=SHAPES_SIZE)["train"][0]["image"]
    labels = ["yellow ring", "purple hexagon"]
    results = pipeline("zero-shot-object-detection", model=str(folder))(image, candidate_labels=labels,
                                                                       threshold=0.0, top_k=5)
    assert len(results) == 5 and {r["label"] for r in results} <= set(labels)
    # the best score of each label is the model's own post-processed score for that name
    processor, tokenizer = shapes_processor(model.config), mf.FlorenceDetectionTokenizer.from_defaults()
    inputs = processor(images=image, return_tensors="pt")
    for label in {r["label"] for r in results}:
        with torch.no_grad():
            output = model(**inputs, **tokenizer([label], return_tensors="pt"))
        best = processor.post_process_object_detection(output, threshold=0.0)[0]["scores"].max()
        assert max(r["score"] for r in results if r["label"] == label) == pytest.approx(best.item(), abs=1e-5)


def test_object_detection_pipeline_uses_the_stored_class_names(open_vocabulary_folder):
    from transformers import pipeline

    _, folder = open_vocabulary_folder
    image = Image.new("RGB", (SHAPES_SIZE, SHAPES_SIZE), "white")
    results = pipeline("object-detection", model=str(folder))(image, threshold=0.0)
    assert results and {r["label"] for r in results} <= {"red circle", "blue star", "green cross"}


def test_finetune_script_trains_evaluates_saves_and_resumes(tmp_path):
    """examples/finetune_detection.py on Trainer: a 2-step closed-set run from random weights writes the detector,
    its processor, COCO metrics, a model card and predictions.png; a resumed run continues from the checkpoint."""
    from tests.conftest import run_example

    common = ["--output", str(tmp_path), "--num-train", "8", "--num-eval", "4", "--image-size", "64",
              "--per_device_train_batch_size", "4", "--save_steps", "1"]
    run_example("finetune_detection.py", *common, "--max_steps", "2")
    metrics = json.loads((tmp_path / "eval_results.json").read_text())
    assert {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"} <= set(metrics)
    for name in ("model.safetensors", "preprocessor_config.json", "eval_results.json", "README.md", "predictions.png"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["FlorenceForObjectDetection"]
    run_example("finetune_detection.py", *common, "--max-steps", "3", "--resume-from-checkpoint", "latest")
    assert (tmp_path / "checkpoint-3").is_dir()
