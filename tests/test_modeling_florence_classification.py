"""Tests of `modeling_florence/modeling_florence_classification.py`."""

import pytest
import torch
from transformers import AutoModelForImageClassification, pipeline

import modeling_florence as mf
from modeling_florence.evaluation_florence import encode_images, zero_shot_classification, zero_shot_classifier


TEMPLATES = ["a {}", "a photo of a {}"]


def test_step_zero_predictions_equal_zero_shot_classification(florence_folder, shifted):
    florence = mf.FlorenceModel.from_pretrained(florence_folder).eval()
    processor = mf.FlorenceProcessor.from_pretrained(florence_folder)
    names = shifted["test"].features["label"].names
    images, labels = list(shifted["test"]["image"]), list(shifted["test"]["label"])
    classifier = mf.FlorenceForImageClassification.from_florence(florence_folder, names, templates=TEMPLATES).eval()
    assert classifier.config.id2label[7] == names[7] and classifier.config.num_labels == 30
    with torch.no_grad():
        logits = classifier(pixel_values=processor(images=images)["pixel_values"]).logits
        cosine = encode_images(florence, processor, images) @ zero_shot_classifier(florence, processor, names,
                                                                                   TEMPLATES).t()
        norms = florence.get_image_features(processor(images=images)["pixel_values"]).pooler_output.norm(dim=-1)
    assert torch.equal(logits.argmax(-1), cosine.argmax(-1))
    # logits = temperature * cosine * |P x|: the zero-shot logits scaled per image (the projection is folded in)
    torch.testing.assert_close(logits, florence.temperature() * cosine * norms[:, None], atol=1e-4, rtol=1e-4)
    calibrated = mf.FlorenceForImageClassification.from_florence(florence, names, templates=TEMPLATES,
                                                                 processor=processor, calibration_images=images)
    with torch.no_grad():
        calibrated_logits = calibrated.eval()(pixel_values=processor(images=images)["pixel_values"]).logits
    torch.testing.assert_close(calibrated_logits, logits / norms.mean(), atol=1e-4, rtol=1e-4)
    assert torch.equal(calibrated_logits.argmax(-1), cosine.argmax(-1))
    accuracy = 100.0 * (logits.argmax(-1) == torch.tensor(labels)).float().mean().item()
    expected = zero_shot_classification(florence, processor, images, labels, names, TEMPLATES)["top1"]
    assert accuracy == pytest.approx(expected)


def test_saved_classifier_loads_with_auto_class_and_pipeline(florence_folder, shifted, tmp_path):
    names = shifted["test"].features["label"].names
    florence = mf.FlorenceModel.from_pretrained(florence_folder)
    processor = mf.FlorenceProcessor.from_pretrained(florence_folder)
    model = mf.FlorenceForImageClassification.from_florence(florence, names, templates=TEMPLATES, processor=processor)
    model.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is mf.FlorenceForImageClassification
    image = shifted["test"][3]["image"]
    with torch.no_grad():
        logits = reloaded(pixel_values=processor(images=[image])["pixel_values"]).logits[0]
    predictions = pipeline("image-classification", model=str(tmp_path), top_k=3)(image)
    assert [p["label"] for p in predictions] == [names[i] for i in logits.topk(3).indices.tolist()]
    assert predictions[0]["score"] == pytest.approx(logits.softmax(-1).max().item(), abs=1e-5)
    # the image tower of a two-tower folder loads into the classifier (with a fresh head of the asked size)
    from_two_tower = AutoModelForImageClassification.from_pretrained(florence_folder, num_labels=4)
    assert from_two_tower.classifier.out_features == 4
    for key, value in florence.vision_model.state_dict().items():
        assert torch.equal(from_two_tower.vision_model.state_dict()[key], value), key


def test_loss_follows_problem_type():
    torch.manual_seed(0)
    config = mf.FlorenceVisionConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=3)
    model = mf.FlorenceForImageClassification(config).eval()
    pixel_values = torch.randn(4, 3, 32, 32)
    single = torch.tensor([0, 2, 1, 2])
    output = model(pixel_values=pixel_values, labels=single)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, single))
    assert model.config.problem_type == "single_label_classification"
    model.config.problem_type = "multi_label_classification"
    multi = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]])
    output = model(pixel_values=pixel_values, labels=multi)
    torch.testing.assert_close(output.loss, torch.nn.functional.binary_cross_entropy_with_logits(output.logits, multi))
    regression = mf.FlorenceForImageClassification(mf.FlorenceVisionConfig.from_dict({**config.to_dict(),
                                                                                      "problem_type": None,
                                                                                      "id2label": {0: "score"},
                                                                                      "label2id": {"score": 0}}))
    targets = torch.tensor([0.5, -1.0, 2.0, 0.0])
    output = regression(pixel_values=pixel_values, labels=targets)
    assert regression.config.problem_type == "regression"
    torch.testing.assert_close(output.loss, torch.nn.functional.mse_loss(output.logits.squeeze(), targets))


@pytest.mark.parametrize(
    "names, message",
    [([], "class_names is empty"), (["red circle", "Red circle "], r"duplicates.*'Red circle '"),
     (["red circle", ""], "non-empty strings"), ("red circle", "must be a list")],
)
def test_class_name_errors(florence_folder, names, message):
    with pytest.raises(ValueError, match=message):
        mf.FlorenceForImageClassification.from_florence(florence_folder, names, templates=TEMPLATES)
