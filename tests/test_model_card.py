"""Tests of `modeling_florence/model_card.py`."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import get_peft_model

import modeling_florence as mf
from modeling_florence import FlorenceModel, load_preset
from modeling_florence.finetuning_florence import run_classification, run_retrieval
from modeling_florence.model_card import build_model_card, split_results, write_finetune_card, write_model_card
from modeling_florence.peft_florence import default_lora_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "model_cards"))
from generate_model_card import main as generate_card  # noqa: E402


RESULTS = {"zero_shot_top1": 90.0, "classes": 30.0, "retrieval_pairs": 540.0, "before": {"i2t_R@1": 50.0},
           "after": {"i2t_R@1": 60.0}, "losses": {"1": 2.3, "2": 2.1}, "trainable_parameters": 1234,
           "train_seconds": 12.5, "mode": "full"}


def published(card: ModelCard) -> dict:
    return {result.metric_type: result.metric_value for result in card.data.eval_results or []}


def check_card(path: Path) -> ModelCard:
    """The card parses with huggingface_hub and carries the metadata every Florence card must have."""
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.pipeline_tag and "florence" in data.tags and data.datasets
    return card


def test_counts_and_starting_points_are_not_published_as_metrics(florence_folder):
    metrics, setup = split_results(RESULTS)
    assert metrics == {"zero_shot_top1": 90.0, "after/i2t_R@1": 60.0}
    assert setup == {"classes": 30.0, "retrieval_pairs": 540.0, "before/i2t_R@1": 50.0, "trainable_parameters": 1234.0,
                     "train_seconds": 12.5}
    card = build_model_card(florence_folder, results=RESULTS)
    assert published(card) == metrics
    assert "| classes | 30 |" in card.text and "| retrieval_pairs | 540 |" in card.text and "losses" not in card.text


def test_a_lora_adapter_gets_a_card_naming_its_base_model(florence_folder, tmp_path):
    model = mf.FlorenceModel.from_pretrained(florence_folder)
    get_peft_model(model, default_lora_config(model, r=2)).save_pretrained(tmp_path / "adapter")
    write_finetune_card(tmp_path / "adapter", {"after": {"i2t_R@1": 61.0}, "classes": 30},
                        base_model=str(florence_folder), description="A LoRA adapter for retrieval on Shapes.")
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.base_model == str(florence_folder) and card.data.library_name == "peft"
    assert card.data.pipeline_tag == "zero-shot-image-classification" and "lora" in card.data.tags
    assert published(card) == {"after/i2t_R@1": 61.0}
    assert "A LoRA adapter for retrieval on Shapes." in card.text and "r=2, alpha=4" in card.text
    assert "PeftModel.from_pretrained" in card.text and "| classes | 30 |" in card.text
    (tmp_path / "bare").mkdir()
    shutil.copy(tmp_path / "adapter" / "adapter_model.safetensors", tmp_path / "bare")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "bare" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(ValueError, match=r"name the base model \(base_model=...\)"):
        write_finetune_card(tmp_path / "bare")


def test_classification_and_retrieval_outputs_carry_cards(florence_folder, tmp_path):
    tiny = dict(num_train=40, num_test=20, num_train_epochs=1, per_device_train_batch_size=20)
    run_classification(str(florence_folder), str(tmp_path / "full"), **tiny)
    card = ModelCard.load(tmp_path / "full" / "README.md")
    assert card.data.pipeline_tag == "image-classification" and card.data.base_model == str(florence_folder)
    assert set(published(card)) == {"top1", "top5", "gain"}
    run_classification(str(florence_folder), str(tmp_path / "lora"), mode="lora", **tiny)
    card = ModelCard.load(tmp_path / "lora" / "README.md")
    assert card.data.base_model == str(florence_folder) and card.data.library_name == "peft"
    run_retrieval(str(florence_folder), str(tmp_path / "retrieval"), num_train=16, num_test=16, max_steps=1,
                  per_device_train_batch_size=8)
    card = ModelCard.load(tmp_path / "retrieval" / "README.md")
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert published(card) and all(name.startswith("after/") for name in published(card))


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
