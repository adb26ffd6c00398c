# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Pretraining recipes (`configuration/recipe-unicl-*.json`), checked in one place.

`Recipe.from_file` builds a `Recipe` whose `__post_init__` checks the type and range of every field (batch size,
steps, accumulation, clipping norm, checkpoint retention, seed, workers, ...), each stage, the `data` block (its
keys are the arguments of the source's loader; Florence Shapes: `ShapesData`) and `model_overrides` (every key,
nested ones included, must be a field of the preset's config). Errors are `ValueError`s naming the field.
"""

import inspect
import json
import math
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from .configuration_florence import check_overrides, load_preset, presets_dir
from .data_florence import image_folder_pairs, load_image_text_pairs
from .evaluation_florence import load_templates
from .shapes import PAIR_VOCABULARIES

MIXED_PRECISION = ("no", "fp16", "bf16")
DATA_LOADERS = {"imagefolder": image_folder_pairs, "jsonl": load_image_text_pairs, "csv": load_image_text_pairs,
                "webdataset": load_image_text_pairs}


def bounded(default=MISSING, low=None, high=None, choices=None, default_factory=MISSING):
    """A dataclass field with the range (`low`/`high`, inclusive) or `choices` that `check_fields` enforces."""
    return field(default=default, default_factory=default_factory,
                 metadata={"low": low, "high": high, "choices": choices})


def check_number(name: str, value, low=None, high=None, above: bool = False, integer: bool = False,
                 nonzero: bool = False) -> None:
    """The one range check for numbers, from recipes and scripts alike: a real number (an `int` when `integer`; never a
    bool), finite (NaN and infinities such as `1e999` refused), `>= low` (`> low` when `above`), `<= high`, and not 0
    when `nonzero` (e.g. `max_steps`, where -1 means "use the epochs")."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if above else value < low):
        raise ValueError(f"{name} must be {'>' if above else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    if nonzero and value == 0:
        raise ValueError(f"{name} must not be 0, got {value!r}")


def check_arguments(args, ranges: dict) -> None:
    """Check a script's parsed arguments: `ranges` maps an attribute of `args` to the `check_number` keywords (`low`,
    `high`, `above`); `None` values (unset optional flags) pass. The error names the flag as it is typed."""
    for name, bounds in ranges.items():
        value = getattr(args, name)
        if value is not None:
            check_number(f"--{name.replace('_', '-')}", value, integer=isinstance(value, int), **bounds)


def check_fields(instance, where: str) -> None:
    """Check every field of a dataclass instance against its annotation and `bounded` range; a `ValueError` names
    the field. JSON integers are accepted where a float is expected, booleans are never taken for numbers."""
    for spec in fields(instance):
        value, name = getattr(instance, spec.name), f"{where}{spec.name}"
        allowed = typing.get_args(spec.type) or (spec.type,)
        if value is None and type(None) in allowed:
            continue
        types = tuple(t for t in allowed if t is not type(None)) + ((int,) if float in allowed else ())
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
        low, high, choices = (spec.metadata.get(key) for key in ("low", "high", "choices"))
        if choices is not None and value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"<= {high}" if low is None else f"between {low} and {high}"
            raise ValueError(f"{name} must be {bounds}, got {value!r}")


def build(cls, values, where: str):
    """`cls(**values)` for a dataclass, naming unknown keys (and the known ones) in the error."""
    if not isinstance(values, dict):
        raise ValueError(f"{where.rstrip('.')} must be a JSON object, got {values!r}")
    known = [spec.name for spec in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"Unknown {where.rstrip('.') or 'recipe'} keys {unknown}; known keys: {sorted(known)}")
    required = [spec.name for spec in fields(cls) if spec.default is MISSING and spec.default_factory is MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ValueError(f"{where.rstrip('.') or 'recipe'} needs {missing}")
    return cls(**values)


@dataclass
class Stage:
    name: str
    steps: int = bounded(low=0)
    prompt_templates: bool = True
    image_size: int | None = bounded(None, low=1)


@dataclass
class ShapesData:
    """The recipe's `data` block for Florence Shapes (`"source": "shapes"`)."""

    source: str = "shapes"
    num_train: int = bounded(20000, low=1)
    num_validation: int = bounded(1000, low=0)
    num_test: int = bounded(1000, low=0)
    num_classification_test: int = bounded(600, low=0)
    label_fraction: float = bounded(0.3, low=0.0, high=1.0)
    detailed_fraction: float = bounded(0.3, low=0.0, high=1.0)
    # colours and shapes of the training pairs: the 30 zero-shot classes' or "all" of Florence Shapes
    vocabulary: str = bounded("classes", choices=tuple(PAIR_VOCABULARIES))
    seed: int = bounded(0, low=0, high=2**32 - 1)

    def __post_init__(self):
        check_fields(self, "data.")
        if self.label_fraction + self.detailed_fraction > 1:
            raise ValueError(f"data.label_fraction + data.detailed_fraction must be <= 1, got "
                             f"{self.label_fraction} + {self.detailed_fraction}")


def check_data(data: dict) -> None:
    """The `data` block: a known source whose keys are the loader's arguments (Shapes: `ShapesData`)."""
    source = data.get("source", "shapes") if isinstance(data, dict) else None
    if source == "shapes":
        build(ShapesData, data, "data.")
        return
    if source not in DATA_LOADERS:
        raise ValueError(f"data.source must be one of {['shapes', *DATA_LOADERS]}, got {source!r}")
    parameters = inspect.signature(DATA_LOADERS[source]).parameters
    known = set(parameters) | {"source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"Unknown data keys {unknown} for source {source!r}; known keys: {sorted(known)}")
    required = [name for name, p in parameters.items() if p.default is p.empty and name != "source"]
    missing = [name for name in required if name not in data]
    if missing:
        raise ValueError(f"data block for source {source!r} needs {missing}")


@dataclass
class Recipe:
    model: str = "florence-tiny"
    model_overrides: dict = bounded(default_factory=dict)
    data: dict = bounded(default_factory=lambda: {"source": "shapes"})
    batch_size: int = bounded(64, low=1)
    gradient_accumulation_steps: int = bounded(1, low=1)
    learning_rate: float = bounded(1e-3, low=0.0)
    weight_decay: float = bounded(0.05, low=0.0)
    warmup_steps: int = bounded(100, low=0)
    max_grad_norm: float | None = bounded(1.0, low=0.0)  # 0 or null: no clipping
    stages: list = bounded(default_factory=list)
    eval_every: int = bounded(0, low=0)
    checkpoint_every: int = bounded(0, low=0)
    templates: str | None = None
    seed: int = bounded(0, low=0, high=2**32 - 1)
    mixed_precision: str = bounded("no", choices=MIXED_PRECISION)  # bf16 on a CPU without bf16 units: fp32
    gradient_checkpointing: bool = False
    keep_checkpoints: int = bounded(2, low=1)
    cache_images: bool = False  # preprocess every training image once and keep the tensors (small data sets)
    num_workers: int = bounded(1, low=0)  # DataLoader worker processes (0: build batches on the training thread)
    prefetch_factor: int = bounded(2, low=1)  # batches each worker prepares ahead

    def __post_init__(self):
        """The one place where a recipe is checked: types and ranges of every field, stages, data and overrides."""
        check_fields(self, "")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        self.stages = [stage if isinstance(stage, Stage) else build(Stage, stage, f"stages[{index}].")
                       for index, stage in enumerate(self.stages)]
        for index, stage in enumerate(self.stages):
            check_fields(stage, f"stages[{index}].")
        names = [stage.name for stage in self.stages]
        if not self.stages or self.total_steps < 1 or len(set(names)) != len(names):
            raise ValueError(f"stages must list uniquely named stages with at least one step in all, got {names}")
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} exceeds the {self.total_steps} steps of the stages")
        check_data(self.data)
        config = self.model_config()
        minimum = config.vision_config.patch_size * config.vision_config.window_size
        for index, stage in enumerate(self.stages):
            if stage.image_size is not None and stage.image_size < minimum:
                raise ValueError(f"stages[{index}].image_size must be >= {minimum} px for {self.model}")
        self.template_list()

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "Recipe":
        path = Path(path)
        if not path.is_file() and (presets_dir() / path.name).is_file():
            path = presets_dir() / path.name
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read recipe {path}: {error}") from error
        if isinstance(values, dict):
            values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return build(cls, values, "")
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    def model_config(self):
        """The config of the model this recipe trains: its preset with `model_overrides` merged in."""
        check_overrides(load_preset(self.model), self.model_overrides, where="model_overrides")
        return load_preset(self.model, **self.model_overrides)

    def template_list(self) -> list[str]:
        """The prompt templates: the recipe's `templates` file (a path or a shipped name), else the defaults."""
        if self.templates is None:
            return load_templates()
        path = Path(self.templates)
        try:
            return load_templates(path if path.is_file() else presets_dir() / self.templates)
        except (OSError, ValueError) as error:
            raise ValueError(f"templates: {error}") from error

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    def stage_spans(self):
        """`(stage, first_step, end_step)` for each stage, in order."""
        first = 0
        for stage in self.stages:
            yield stage, first, first + stage.steps
            first += stage.steps
