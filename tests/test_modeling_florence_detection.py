"""Tests of `modeling_florence/modeling_florence_detection.py`."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import box_iou

import modeling_florence as mf
from modeling_florence.modeling_florence_detection import (
    FlorenceDyHeadBlock,
    atss_assign,
    decode_boxes,
    flatten_offsets,
    make_anchors,
)
from modeling_florence.training_florence_detection import DetectionCollator, evaluate_detection, predict
from tests.test_common import tiny_detection_config, tiny_text_config, detection_labels

from florence_testing import (
    assert_one_training_step,
    davit_stage_states,
    open_vocabulary_config,
    reference_dyhead_block,
)


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


# ----------------------------------------------------------------------------------------------------------------------
# A DyHead block against a from-the-paper reference
# ----------------------------------------------------------------------------------------------------------------------


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
    for _ in range(250):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    folder = tmp_path_factory.mktemp("detector")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model.eval(), processor, dataset, names, losses, folder


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


def test_set_class_names_truncates_long_names_to_the_text_positions():
    torch.manual_seed(0)
    config = tiny_detection_config(text_config=tiny_text_config().to_dict(), projection_dim=24)
    model = mf.FlorenceForObjectDetection(config).eval()
    tokenizer = mf.FlorenceDetectionTokenizer.from_defaults()
    positions = config.text_config.max_position_embeddings
    long_name = " ".join(["striped"] * 100)
    model.set_class_names([long_name, "red circle"], tokenizer)
    assert model.class_embeddings.shape == (2, config.projection_dim)
    truncated = tokenizer([long_name], truncation=True, max_length=positions, return_tensors="pt")
    expected = model.get_class_embeddings(truncated["input_ids"], truncated["attention_mask"])[0]
    torch.testing.assert_close(model.class_embeddings[0], expected)


def test_a_closed_set_detector_without_classes_is_refused():
    with pytest.raises(ValueError, match="closed-set detector needs at least one class, got num_labels=0"):
        mf.FlorenceForObjectDetection(tiny_detection_config(num_labels=0))


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


def test_from_florence2_folder_davit_maps_equal_transformers_and_train_one_step(florence2_folder, two_tower_folder):
    """A detector on the DaViT of a Transformers `florence2` folder: the tower is copied exactly (its maps equal
    `Florence2VisionBackbone`'s hidden states), the detector is closed-set, and one training step moves the DaViT."""
    theirs, folder = florence2_folder
    fields = dict(out_features=["stage1", "stage2"], fpn_channels=16, num_dyhead_blocks=1, dyhead_norm_groups=4)
    detector = mf.FlorenceForObjectDetection.from_florence(folder, id2label={0: "a", 1: "b", 2: "c"}, **fields)
    assert detector.config.vision_tower == "davit" and not detector.config.is_open_vocabulary
    assert type(detector.vision_model) is mf.FlorenceDaViTBackbone and detector.config.strides == [4, 8, 16, 32]
    pixels = torch.randn(2, 3, 40, 32)
    expected = davit_stage_states(theirs, pixels)
    with torch.no_grad():
        maps = detector.vision_model(pixels).feature_maps
        features, _ = detector.backbone_features(pixels, False, False)
    for actual, reference, feature, norm in zip(maps, expected, features, detector.hidden_states_norms.values(),
                                                 strict=True):
        torch.testing.assert_close(actual, reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(feature, norm(reference.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    # a model instance gives the same tower
    from_model = mf.FlorenceForObjectDetection.from_florence(theirs, num_labels=3, **fields)
    assert all(torch.equal(v, from_model.vision_model.state_dict()[k])
               for k, v in detector.vision_model.state_dict().items())
    assert_one_training_step(detector, lambda model: model(pixels, labels=detection_labels(2)).loss)

    # open vocabulary: the text tower and projection of a two-tower Florence (`text_source`), frozen
    open_detector = mf.FlorenceForObjectDetection.from_florence(folder, text_source=two_tower_folder, **fields)
    florence = mf.FlorenceModel.from_pretrained(two_tower_folder)
    assert open_detector.config.is_open_vocabulary and open_detector.config.projection_dim == 24
    assert torch.equal(open_detector.text_projection.weight, florence.text_projection.weight)
    assert not any(p.requires_grad for p in open_detector.text_model.parameters())
    with pytest.raises(ValueError, match="holds no text tower.*text_source"):
        mf.FlorenceForObjectDetection.from_florence(folder, open_vocabulary=True, **fields)
