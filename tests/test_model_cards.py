"""Model cards: Hub metadata validated by huggingface_hub, facts from the saved folder, results only from the run."""

import json
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from modeling_florence import FlorenceModel, load_preset
from modeling_florence.model_card import build_model_card, write_model_card

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "model_cards"))
from generate_model_card import main as generate_card  # noqa: E402


def check_card(path: Path) -> ModelCard:
    """The card parses with huggingface_hub and carries the metadata every Florence card must have."""
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.pipeline_tag and "florence" in data.tags and data.datasets
    return card


def test_card_for_a_saved_model_reports_only_the_runs_results(tmp_path):
    torch.manual_seed(0)
    model = FlorenceModel(load_preset("florence-tiny"))
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "results.json").write_text(json.dumps({"zero_shot_top1": 93.5, "retrieval": {"i2t_R@5": 88.25}}))
    path = generate_card([str(tmp_path / "model"), "--model-name", "me/florence-tiny", "--results",
                          str(tmp_path / "results.json"), "--dataset", "florence-shapes"])
    card = check_card(path)
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert card.data.model_name == "me/florence-tiny"
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert reported == {"zero_shot_top1": 93.5, "retrieval/i2t_R@5": 88.25}
    assert "model-index" in path.read_text()
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    assert f"{parameters:.1f}M" in card.text and "| zero_shot_top1 | 93.50 |" in card.text
    assert "window 4" in card.text and "CoSwin" in card.text


def test_card_without_results_says_so_and_foreign_folders_are_refused(tmp_path):
    model = FlorenceModel(load_preset("florence-tiny"))
    model.vision_model.save_pretrained(tmp_path / "vision")
    card = check_card(write_model_card(tmp_path / "vision", base_model="microsoft/swin-tiny"))
    assert card.data.pipeline_tag == "image-feature-extraction" and card.data.base_model == "microsoft/swin-tiny"
    assert card.data.eval_results is None and "No evaluation results were supplied" in card.text
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="not one of the Florence model classes"):
        build_model_card(tmp_path / "other")
