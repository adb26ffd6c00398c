"""`recipe_florence`'s one number check (`check_number`, `check_arguments`): recipes and script arguments alike refuse
NaN, infinities (`1e999` in JSON) and values out of range. (Recipe field checks are in test_recipes.py.)"""

import argparse
import json

import pytest

from modeling_florence.recipe_florence import Recipe, check_arguments, check_number

ONE_STAGE = [{"name": "stage1", "steps": 4}]


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
