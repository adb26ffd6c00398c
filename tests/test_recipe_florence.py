"""Tests of `modeling_florence/recipe_florence.py`."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from modeling_florence.pretraining_florence import resolve_checkpoint, save_checkpoint
from modeling_florence.recipe_florence import Recipe, check_arguments, check_number


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
ONE_STAGE = [{"name": "stage1", "steps": 4}]
REPO = Path(__file__).resolve().parent.parent
STAGES = [{"name": "stage1", "steps": 4}, {"name": "stage2", "steps": 2, "prompt_templates": False}]


def recipe_file(tmp_path, **fields) -> Path:
    values = {"model": "florence-tiny", "data": {"source": "shapes", "num_train": 64}, "batch_size": 16,
              "warmup_steps": 2, "stages": STAGES, **fields}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(values))
    return path


@pytest.fixture
def accelerator():
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    return accelerator


def saved_steps(output: Path) -> list[str]:
    return sorted(path.name for path in (output / "checkpoints").iterdir() if path.name != "latest")


@pytest.mark.parametrize("field, text", [
    ("learning_rate", "NaN"), ("learning_rate", "1e999"), ("learning_rate", "-1e999"), ("weight_decay", "NaN"),
    ("max_grad_norm", "1e999"),
])
def test_recipe_numbers_must_be_finite(tmp_path, field, text):
    """One such run saved a model whose tensors are all NaN: the recipe is refused at load."""
    path = tmp_path / "recipe.json"
    values = {"model": "florence-tiny", "data": {"source": "shapes", "num_train": 64}, "batch_size": 16,
              "warmup_steps": 2, "stages": ONE_STAGE, field: "PLACEHOLDER"}
    path.write_text(json.dumps(values).replace('"PLACEHOLDER"', text))
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        Recipe.from_file(path)


def test_shapes_data_fractions_must_be_finite(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text('{"stages": [{"name": "a", "steps": 2}], "warmup_steps": 0, '
                    '"data": {"source": "shapes", "label_fraction": NaN}}')
    with pytest.raises(ValueError, match="data.label_fraction must be a finite number"):
        Recipe.from_file(path)


@pytest.mark.parametrize("value, bounds, message", [
    (float("nan"), {}, "finite"), (float("inf"), {"low": 0}, "finite"), (-0.5, {"low": 0}, ">= 0"),
    (0, {"low": 0, "above": True}, "> 0"), (2.0, {"high": 1}, "<= 1"), (True, {}, "a number"), ("3", {}, "a number"),
    (0, {"low": -1, "nonzero": True}, "not be 0"), (1.5, {"integer": True}, "an integer"),
])
def test_check_number_refuses(value, bounds, message):
    with pytest.raises(ValueError, match=f"--x must (be )?.*{message}"):
        check_number("--x", value, **bounds)


def test_check_number_accepts_values_in_range():
    check_number("x", 0.0, low=0)
    check_number("x", -1, low=-1, nonzero=True, integer=True)
    check_number("x", 1e-3, low=0, above=True, high=1)


def test_check_arguments_names_the_flag_and_skips_unset_options():
    args = argparse.Namespace(max_steps=0, backbone_learning_rate=None, tower_lr_scale=-1.0)
    with pytest.raises(ValueError, match=r"--max-steps must be >= 1, got 0"):
        check_arguments(args, {"max_steps": {"low": 1}})
    with pytest.raises(ValueError, match=r"--tower-lr-scale must be >= 0, got -1.0"):
        check_arguments(args, {"backbone_learning_rate": {"low": 0}, "tower_lr_scale": {"low": 0}})


@pytest.mark.parametrize("fields, message", [
    ({"learning_rat": 0.1}, r"Unknown recipe keys \['learning_rat'\]"),
    ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
    ({"batch_size": "256"}, r"batch_size must be int, got '256' \(str\)"),
    ({"batch_size": 2.5}, r"batch_size must be int, got 2.5"),
    ({"batch_size": True}, r"batch_size must be int, got True"),
    ({"gradient_accumulation_steps": 0}, r"gradient_accumulation_steps must be >= 1"),
    ({"max_grad_norm": -1.0}, r"max_grad_norm must be >= 0.0"),
    ({"keep_checkpoints": 0}, r"keep_checkpoints must be >= 1"),
    ({"seed": -1}, r"seed must be between 0 and 4294967295"),
    ({"learning_rate": 0}, r"learning_rate must be > 0"),
    ({"warmup_steps": 7}, r"warmup_steps 7 exceeds the 6 steps"),
    ({"mixed_precision": "fp8"}, r"mixed_precision must be one of \['no', 'fp16', 'bf16'\]"),
    ({"num_workers": -1}, r"num_workers must be >= 0"),
    ({"cache_images": "yes"}, r"cache_images must be bool"),
    ({"eval_every": None}, r"eval_every must be int, got None"),
    ({"stages": []}, r"stages must list uniquely named stages with at least one step"),
    ({"stages": [{"name": "a", "steps": 0}]}, r"at least one step"),
    ({"stages": STAGES + [{"name": "stage1", "steps": 1}]}, r"uniquely named"),
    ({"stages": [{"name": "a", "steps": -1}]}, r"stages\[0\].steps must be >= 0"),
    ({"stages": [{"name": "a", "steps": "3"}]}, r"stages\[0\].steps must be int"),
    ({"stages": [{"name": "a", "steps": 3, "epochs": 2}]}, r"Unknown stages\[0\] keys \['epochs'\]"),
    ({"stages": [{"name": "a"}]}, r"stages\[0\] needs \['steps'\]"),
    ({"stages": [{"name": 7, "steps": 3}]}, r"stages\[0\].name must be str"),
    ({"stages": [{"name": "a", "steps": 3, "image_size": 8}]}, r"stages\[0\].image_size must be >= 16 px"),
    ({"data": {"source": "parquet"}}, r"data.source must be one of"),
    ({"data": {"source": "shapes", "num_trian": 5}}, r"Unknown data keys \['num_trian'\]"),
    ({"data": {"source": "shapes", "label_fraction": 1.5}}, r"data.label_fraction must be between 0.0 and 1.0"),
    ({"data": {"source": "shapes", "label_fraction": 0.8, "detailed_fraction": 0.3}}, r"must be <= 1"),
    ({"data": {"source": "shapes", "vocabulary": "every"}}, r"data.vocabulary must be one of \[.classes., .all.\]"),
    ({"data": {"source": "jsonl", "paht": "x.jsonl"}}, r"Unknown data keys \['paht'\] for source 'jsonl'"),
    ({"data": {"source": "csv"}}, r"data block for source 'csv' needs \['path'\]"),
    ({"model": "florence-tiniest"}, r"Unknown preset 'florence-tiniest'"),
    ({"model_overrides": {"projection_dimm": 64}}, r"model_overrides.projection_dimm is not a field"),
    ({"model_overrides": {"vision_config": {"image_sise": 32}}},
     r"model_overrides.vision_config.image_sise is not a field of the florence_coswin config"),
    ({"model_overrides": {"text_config": {"hidden_size": 129}}}, r"num_attention_heads=\d+ does not divide"),
    ({"templates": "no-such-templates.json"}, r"templates: .*no-such-templates.json"),
])
def test_every_recipe_field_is_checked_at_load(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_file(recipe_file(tmp_path, **fields))


def test_valid_recipes_load_and_command_line_overrides_are_checked_too(tmp_path):
    for path in sorted((REPO / "configuration").glob("recipe-*.json")):
        assert Recipe.from_file(path).total_steps > 0
    recipe = Recipe.from_file(recipe_file(tmp_path, learning_rate=1, max_grad_norm=None), batch_size=32)
    assert recipe.batch_size == 32 and recipe.learning_rate == 1 and recipe.stages[1].prompt_templates is False
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Recipe.from_file(recipe_file(tmp_path), batch_size=-8)


def test_retention_never_deletes_what_latest_names(tmp_path, accelerator):
    save_checkpoint(accelerator, tmp_path, 3, [{"run": "first"}], keep=2)
    save_checkpoint(accelerator, tmp_path, 6, [{"run": "first"}], keep=2)
    # Resumed from step 3 with a recipe keeping one checkpoint: step 4 is latest and must survive pruning.
    save_checkpoint(accelerator, tmp_path, 4, [{"run": "resumed"}], keep=1)
    assert resolve_checkpoint(tmp_path, "latest").name == "step-0000004" and saved_steps(tmp_path) == ["step-0000004"]
    # A step saved again replaces the old folder only once complete, and `latest` names the new one.
    save_checkpoint(accelerator, tmp_path, 6, [{"run": "first"}], keep=3)
    save_checkpoint(accelerator, tmp_path, 6, [{"run": "again"}], keep=3)
    latest = resolve_checkpoint(tmp_path, "latest")
    # (saved under a new name, step-0000006-r1, so the old copy stays whole until `latest` names the new one)
    assert latest.name == "step-0000006-r1" and saved_steps(tmp_path) == ["step-0000004", "step-0000006-r1"]
    assert json.loads((latest / "trainer_state.json").read_text())["history"] == [{"run": "again"}]


@pytest.mark.parametrize("pointer", ["../../elsewhere", "/tmp/step-0000003", "step-0000003/../../x", "step-0000009"])
def test_latest_only_names_checkpoints_of_the_run(tmp_path, accelerator, pointer):
    save_checkpoint(accelerator, tmp_path, 3, [], keep=2)
    (tmp_path / "checkpoints" / "latest").write_text(pointer)
    with pytest.raises(ValueError, match="latest names"):
        resolve_checkpoint(tmp_path, "latest")


def test_resuming_from_latest_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="holds no checkpoint"):
        resolve_checkpoint(tmp_path, "latest")
    assert resolve_checkpoint(tmp_path, None) is None
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        resolve_checkpoint(tmp_path, str(tmp_path))
