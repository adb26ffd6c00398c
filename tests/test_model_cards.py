"""Model cards: metadata and architecture facts come from the saved folder, results only from a results file."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "model_cards"))
from generate_model_card import main as generate_card  # noqa: E402

from modeling_florence import FlorenceModel, load_preset  # noqa: E402


def test_card_for_a_saved_model(tmp_path):
    torch.manual_seed(0)
    model = FlorenceModel(load_preset("florence-tiny"))
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "results.json").write_text(json.dumps({"zero_shot": {"top1": 93.5}, "i2t_R@5": 88.25}))
    generate_card([str(tmp_path / "model"), "--repo-id", "me/florence-tiny", "--results", str(tmp_path / "results.json"),
                   "--dataset", "florence-shapes"])
    card = (tmp_path / "model" / "README.md").read_text()
    front_matter = card.split("---")[1]
    assert "pipeline_tag: zero-shot-image-classification" in front_matter
    assert "library_name: transformers" in front_matter and "- florence-shapes" in front_matter
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    assert f"{parameters:.1f}M" in card
    assert "| zero_shot/top1 | 93.50 |" in card and "| i2t_R@5 | 88.25 |" in card
    assert "window 4" in card and "CoSwin" in card


def test_card_without_results_says_so_and_rejects_foreign_folders(tmp_path):
    model = FlorenceModel(load_preset("florence-tiny"))
    model.vision_model.save_pretrained(tmp_path / "vision")
    generate_card([str(tmp_path / "vision"), "--repo-id", "me/coswin"])
    card = (tmp_path / "vision" / "README.md").read_text()
    assert "No evaluation results were supplied" in card and "image-feature-extraction" in card
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not one of"):
        generate_card([str(tmp_path / "other"), "--repo-id", "me/bert"])
