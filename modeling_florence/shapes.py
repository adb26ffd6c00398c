# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Florence Shapes: a seeded, procedural vision-language data set that exercises the whole Florence family offline.

Coloured shapes on textured, noisy backgrounds, rendered with numpy (thousands of 64x64 images per second), as
`datasets.DatasetDict`s with train/validation/test splits for five tasks:

- `build_pairs`: image-text pairs (`image`, `text`, `is_label`): captions in varied wording with many exact
  duplicates (UniCL positives), and short one- or two-word labels (`is_label=True`) for prompt templates;
- `build_classification`: zero-shot classification (`image`, `label` as a ClassLabel of "colour shape" names);
- `build_detection`: COCO-style boxes (`image`, `image_id`, `width`, `height`, `objects`), 1-6 objects per image;
- `build_vqa`: questions about colour, shape, count, position and existence with 10 annotator answers;
- `build_video`: clips of a shape moving, growing, shrinking or rotating (`frames`, `label`, `caption`);
- `build_florence2`: Florence-2 multi-task rows (`image`, `task`, `prompt`, `target`, `answers`): captions, detection,
  phrase grounding, referring segmentation, region to category and VQA, boxes and polygons as `<loc_..>` tokens.

Every example is drawn from its own generator seeded by (seed, task, split, index), so a split is identical across
runs and machines and does not depend on the sizes of the others. Write a set to disk with
`python -m modeling_florence.shapes --task pairs --output DIR`.
"""

import argparse
import functools
import io
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value
from PIL import Image as PILImage

from .processing_florence_generation import location_text

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon", "diamond", "ring")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "pink": (240, 120, 190),
    "cyan": (40, 200, 210),
}
# Zero-shot classes: 6 colours x 5 shapes = 30 classes, distinguishable down to 32 px.
CLASS_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
CLASS_SHAPES = ("circle", "square", "triangle", "star", "cross")
# Radius (half extent) of a pair/classification object as a fraction of the image side; "small" and "large" are the
# two halves of the range. The smallest object is ~12 px wide in the demo's 32 px images (3 patches of a patch-4
# encoder), still recognisable; the largest still fits inside a corner cell of the 3x3 position grid.
RADIUS_RANGE = (0.18, 0.3)
# (colours, shapes) of pretraining pairs: the zero-shot classes' or every one.
PAIR_VOCABULARIES = {"classes": (CLASS_COLOURS, CLASS_SHAPES), "all": (tuple(COLOURS), SHAPES)}
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "center", "right")
ACTIONS = ("moving left", "moving right", "moving up", "moving down", "growing", "shrinking", "rotating")
SPLITS = ("train", "validation", "test")
TASK_IDS = {"pairs": 1, "classification": 2, "detection": 3, "vqa": 4, "video": 5, "florence2": 6}


@dataclass
class ShapeObject:
    shape: str
    colour: str
    cx: float  # centre, pixels
    cy: float
    radius: float  # half the extent, pixels
    angle: float = 0.0  # radians

    @property
    def size_word(self) -> str:
        return "large" if self.radius >= self.reference_radius else "small"

    reference_radius: float = 0.0  # radius separating "small" from "large" for this image size

    def position(self, image_size: int) -> str:
        row = ROWS[min(2, int(3 * self.cy / image_size))]
        column = COLUMNS[min(2, int(3 * self.cx / image_size))]
        return "center" if (row, column) == ("middle", "center") else f"{row} {column}"


# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------
def _polygon_radius(theta: np.ndarray, sides: int) -> np.ndarray:
    """Boundary radius (unit circumradius) of a regular polygon at polar angle theta."""
    sector = 2 * np.pi / sides
    return np.cos(np.pi / sides) / np.cos((theta % sector) - sector / 2)


@functools.lru_cache(maxsize=8)
def pixel_centres(image_size: int) -> np.ndarray:
    """`(2, H, W)` y/x coordinates of pixel centres (read-only, shared)."""
    grid = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    grid.flags.writeable = False
    return grid


def shape_mask(obj: ShapeObject, image_size: int) -> np.ndarray:
    """Boolean mask of one shape, from its polar boundary function (exact, vectorised)."""
    ys, xs = pixel_centres(image_size)
    dx, dy = xs - obj.cx, ys - obj.cy
    distance = np.hypot(dx, dy) / max(obj.radius, 1e-6)
    theta = np.arctan2(dy, dx) - obj.angle
    if obj.shape == "circle":
        return distance <= 1.0
    if obj.shape == "ring":
        return (distance <= 1.0) & (distance >= 0.55)
    if obj.shape == "square":
        return distance <= _polygon_radius(theta + np.pi / 4, 4)
    if obj.shape == "diamond":
        return distance <= _polygon_radius(theta, 4) * np.where(np.abs(np.sin(theta)) > 0.7, 1.0, 0.75)
    if obj.shape == "triangle":
        return distance <= _polygon_radius(theta + np.pi / 2, 3)
    if obj.shape == "hexagon":
        return distance <= _polygon_radius(theta, 6)
    if obj.shape == "star":
        # five points: radius swings between 1 and 0.45 with the angle
        spikes = np.abs(((theta + np.pi / 2) % (2 * np.pi / 5)) - np.pi / 5) / (np.pi / 5)
        return distance <= 0.45 + 0.55 * (1 - spikes) ** 1.6
    if obj.shape == "cross":
        u = (dx * np.cos(obj.angle) + dy * np.sin(obj.angle)) / obj.radius
        v = (-dx * np.sin(obj.angle) + dy * np.cos(obj.angle)) / obj.radius
        return ((np.abs(u) <= 1) & (np.abs(v) <= 0.33)) | ((np.abs(v) <= 1) & (np.abs(u) <= 0.33))
    raise ValueError(f"Unknown shape {obj.shape!r}; known shapes: {SHAPES}")


def background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """A muted, textured background: a colour gradient, low-frequency blotches and pixel noise."""
    base = rng.uniform(60, 170, size=3)
    ramp = np.linspace(-1, 1, image_size)
    direction = rng.uniform(-25, 25, size=(2, 3))
    image = base + ramp[:, None, None] * direction[0] + ramp[None, :, None] * direction[1]
    coarse = rng.normal(0, 18, size=(image_size // 8 + 1, image_size // 8 + 1, 1))
    image = image + np.kron(coarse, np.ones((8, 8, 1)))[:image_size, :image_size]
    image = image + rng.normal(0, 8, size=(image_size, image_size, 1))
    return image


def png(image: np.ndarray) -> dict:
    """Encode for a `datasets.Image` column: fast PNG (lossless, so rendering stays exact)."""
    buffer = io.BytesIO()
    PILImage.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return {"bytes": buffer.getvalue(), "path": None}


def render(objects: list[ShapeObject], image_size: int, rng: np.random.Generator) -> np.ndarray:
    """`(H, W, 3)` uint8 image of the objects (drawn in order) on a fresh background."""
    image = background(rng, image_size)
    for obj in objects:
        mask = shape_mask(obj, image_size)
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float64) + rng.normal(0, 6, size=3)
        image[mask] = colour + rng.normal(0, 5, size=(int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def tight_box(obj: ShapeObject, image_size: int) -> list[float]:
    """COCO `[x, y, width, height]` of the pixels the object covers."""
    ys, xs = np.nonzero(shape_mask(obj, image_size))
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def sample_object(
    rng: np.random.Generator, image_size: int, shapes=SHAPES, colours=tuple(COLOURS), radius_range=RADIUS_RANGE
) -> ShapeObject:
    radius = rng.uniform(*radius_range) * image_size
    margin = radius + 1
    return ShapeObject(
        shape=str(rng.choice(shapes)),
        colour=str(rng.choice(colours)),
        cx=float(rng.uniform(margin, image_size - margin)),
        cy=float(rng.uniform(margin, image_size - margin)),
        radius=float(radius),
        angle=float(rng.uniform(-0.3, 0.3)),
        reference_radius=sum(radius_range) / 2 * image_size,
    )


def sample_scene(rng: np.random.Generator, image_size: int, count: int, **kwargs) -> list[ShapeObject]:
    """`count` objects that overlap little (rejection sampling on centre distances)."""
    objects: list[ShapeObject] = []
    attempts = 0
    while len(objects) < count and attempts < 50:  # large objects may not all fit: give up, keep those placed
        attempts += 1
        candidate = sample_object(rng, image_size, **kwargs)
        if all(np.hypot(candidate.cx - o.cx, candidate.cy - o.cy) > 0.9 * (candidate.radius + o.radius)
               for o in objects):
            objects.append(candidate)
    return objects


# ----------------------------------------------------------------------------------------------------------------------
# Task builders
# ----------------------------------------------------------------------------------------------------------------------
def example_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, TASK_IDS[task], SPLITS.index(split), index])


# Splits at least this large are generated by forked worker processes (one per core, up to 8): every example has its
# own generator, so the rows are the same as a serial run's, in the same order.
PARALLEL_MIN_EXAMPLES = 2000
_GENERATION: tuple | None = None  # a forked worker's (make_example, seed, task); closures do not pickle, fork copies


def _rows(make_example: Callable, seed: int, task: str, split: str, start: int, stop: int) -> list[dict]:
    return [make_example(example_rng(seed, task, split, index), split, index) for index in range(start, stop)]


def _start_worker(*generation) -> None:
    global _GENERATION
    _GENERATION = generation


def _worker_rows(chunk: tuple[str, int, int]) -> list[dict]:
    return _rows(*_GENERATION, *chunk)


def _generation_processes(count: int) -> int:
    if count < PARALLEL_MIN_EXAMPLES or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, 8)


def build_splits(
    task: str, make_example: Callable, features: Features, sizes: dict[str, int], seed: int
) -> DatasetDict:
    """Run `make_example(rng, split, index)` for every index of every split into a DatasetDict."""
    splits = {}
    for split, count in sizes.items():
        processes = _generation_processes(count)
        if processes == 1:
            rows = _rows(make_example, seed, task, split, 0, count)
        else:
            step = max(1, -(-count // (processes * 8)))
            chunks = [(split, start, min(start + step, count)) for start in range(0, count, step)]
            with multiprocessing.get_context("fork").Pool(processes, _start_worker, (make_example, seed, task)) as pool:
                rows = [row for part in pool.imap(_worker_rows, chunks) for row in part]
        columns = {name: [row[name] for row in rows] for name in features}
        splits[split] = Dataset.from_dict(columns, features=features)
    return DatasetDict(splits)


def _sizes(num_train: int, num_validation: int, num_test: int) -> dict[str, int]:
    return {"train": num_train, "validation": num_validation, "test": num_test}


CAPTION_TEMPLATES = (
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "a {size} {colour} {shape}",
    "a {colour} {shape} on a textured background",
    "there is a {colour} {shape} in the picture",
    "a {size} {colour} {shape} at the {position}",
)


def describe_objects(objects: list[ShapeObject], image_size: int, rng: np.random.Generator) -> str:
    """A caption in varied wording; few templates and coarse attributes make exact duplicates common."""
    if len(objects) == 1:
        obj = objects[0]
        template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
        return template.format(colour=obj.colour, shape=obj.shape, size=obj.size_word, position=obj.position(image_size))
    parts = [f"a {o.colour} {o.shape}" for o in objects]
    joined = ", ".join(parts[:-1]) + " and " + parts[-1]
    return joined if rng.random() < 0.5 else f"{len(objects)} shapes: {joined}"


def detailed_caption(obj: ShapeObject, image_size: int) -> str:
    """The most specific single-object caption (used for retrieval: distinct attributes, distinct texts)."""
    return f"a {obj.size_word} {obj.colour} {obj.shape} at the {obj.position(image_size)}"


def held_out_object(rng: np.random.Generator, index: int, image_size: int) -> ShapeObject:
    """The object of held-out example `index`: its (colour, shape, size, grid cell) is combination `index` modulo
    all combinations, placed at random inside that cell."""
    cells = [(row, column) for row in range(3) for column in range(3)]
    combination = index % (len(CLASS_COLOURS) * len(CLASS_SHAPES) * 2 * 9)
    colour_shape, rest = divmod(combination, 18)
    colour, shape = CLASS_COLOURS[colour_shape // len(CLASS_SHAPES)], CLASS_SHAPES[colour_shape % len(CLASS_SHAPES)]
    large, cell = divmod(rest, 9)
    obj = sample_object(rng, image_size, shapes=(shape,), colours=(colour,))
    smallest, largest = RADIUS_RANGE
    boundary, gap = (smallest + largest) / 2, 0.01 * (largest - smallest)  # keep clear of the small/large boundary
    low, high = (boundary + gap, largest) if large else (smallest, boundary - gap)
    obj.radius = float(rng.uniform(low, high) * image_size)
    row, column = cells[cell]
    margin = obj.radius + 1
    for axis, position in (("cy", row), ("cx", column)):
        start = max(margin, position * image_size / 3 + 0.5)
        end = min(image_size - margin, (position + 1) * image_size / 3 - 0.5)
        setattr(obj, axis, float(rng.uniform(start, end)) if end > start else float((start + end) / 2))
    return obj


def build_pairs(
    num_train: int = 20000, num_validation: int = 1000, num_test: int = 1000, image_size: int = 64, seed: int = 0,
    label_fraction: float = 0.3, detailed_fraction: float = 0.3, vocabulary: str = "classes",
) -> DatasetDict:
    """Image-text pairs: short labels (is_label, for prompt templates), varied captions, detailed captions.

    Training objects use the colours and shapes of `vocabulary`: "classes", those of the 30 zero-shot classes
    (6 colours x 5 shapes), or "all", every colour and shape of Florence Shapes (8 x 8: what the VQA, detection and
    video tasks draw, so a tower pretrained on them knows every word and shape those tasks use).

    Held-out splits (validation/test) hold single-object images with detailed captions that cycle through all 540
    (colour, shape, size, position) combinations: the retrieval benchmark, with distinct captions."""
    if vocabulary not in PAIR_VOCABULARIES:
        raise ValueError(f"vocabulary must be one of {sorted(PAIR_VOCABULARIES)}, got {vocabulary!r}")
    colours, shapes = PAIR_VOCABULARIES[vocabulary]
    features = Features({"image": Image(), "text": Value("string"), "is_label": Value("bool"),
                         "num_objects": Value("int32")})

    def make(rng, split, index):
        held_out = split != "train"
        if held_out:  # cycle through every (colour, shape, size, position): distinct captions, balanced
            objects = [held_out_object(rng, index, image_size)]
            return {"image": png(render(objects, image_size, rng)), "text": detailed_caption(objects[0], image_size),
                    "is_label": False, "num_objects": 1}
        count = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
        objects = sample_scene(rng, image_size, count, shapes=shapes, colours=colours)
        draw = rng.random()
        if count == 1 and draw < detailed_fraction:
            text, is_label = detailed_caption(objects[0], image_size), False
        elif count == 1 and draw < detailed_fraction + label_fraction:
            text, is_label = f"{objects[0].colour} {objects[0].shape}", True
        else:
            text, is_label = describe_objects(objects, image_size, rng), False
        return {"image": png(render(objects, image_size, rng)), "text": text, "is_label": is_label,
                "num_objects": len(objects)}

    return build_splits("pairs", make, features, _sizes(num_train, num_validation, num_test), seed)


def class_names() -> list[str]:
    return [f"{colour} {shape}" for colour in CLASS_COLOURS for shape in CLASS_SHAPES]


def build_classification(
    num_train: int = 3000, num_validation: int = 600, num_test: int = 600, image_size: int = 64, seed: int = 0
) -> DatasetDict:
    """Single-object images labelled with one of 30 "colour shape" classes (class names are the prompts)."""
    names = class_names()
    features = Features({"image": Image(), "label": ClassLabel(names=names)})

    def make(rng, split, index):
        label = index % len(names)  # balanced classes
        colour, shape = names[label].split(" ")
        obj = sample_object(rng, image_size, shapes=(shape,), colours=(colour,))
        return {"image": png(render([obj], image_size, rng)), "label": label}

    return build_splits("classification", make, features, _sizes(num_train, num_validation, num_test), seed)


def build_detection(
    num_train: int = 2000, num_validation: int = 200, num_test: int = 200, image_size: int = 128, seed: int = 0
) -> DatasetDict:
    """COCO-style detection: 1-6 objects per image, tight `[x, y, w, h]` boxes, shape categories."""
    features = Features({
        "image": Image(), "image_id": Value("int64"), "width": Value("int32"), "height": Value("int32"),
        "objects": Sequence({"id": Value("int64"), "bbox": Sequence(Value("float32"), length=4),
                             "category": ClassLabel(names=list(SHAPES)), "area": Value("float32"),
                             "colour": Value("string")}),
    })

    def make(rng, split, index):
        objects = sample_scene(rng, image_size, int(rng.integers(1, 7)), radius_range=(0.06, 0.16))
        boxes = [tight_box(o, image_size) for o in objects]
        image_id = SPLITS.index(split) * 10**7 + index
        return {
            "image": png(render(objects, image_size, rng)), "image_id": image_id, "width": image_size,
            "height": image_size,
            "objects": {"id": [image_id * 10 + k for k in range(len(objects))], "bbox": boxes,
                        "category": [SHAPES.index(o.shape) for o in objects], "area": [b[2] * b[3] for b in boxes],
                        "colour": [o.colour for o in objects]},
        }

    return build_splits("detection", make, features, _sizes(num_train, num_validation, num_test), seed)


def vqa_score(answer: str, answers: list[str]) -> float:
    """VQA accuracy of one answer against the annotators': min(1, 0.3 * votes)."""
    return min(1.0, 0.3 * sum(a == answer for a in answers))


def vqa_soft_scores(answers: list[str]) -> dict[str, float]:
    """Soft target of every distinct annotator answer (the BCE targets of a VQA head)."""
    return {answer: vqa_score(answer, answers) for answer in sorted(set(answers))}


def _question(rng: np.random.Generator, objects: list[ShapeObject], image_size: int):
    """(type, question, correct answer, plausible wrong answers) about a scene."""
    kind = ("colour", "shape", "count", "position", "existence")[rng.integers(5)]
    target = objects[rng.integers(len(objects))]
    if kind == "colour":
        return kind, f"what colour is the {target.shape}?", target.colour, list(COLOURS)
    if kind == "shape":
        return kind, f"what shape is the {target.colour} object?", target.shape, list(SHAPES)
    if kind == "count":
        return kind, "how many shapes are there?", str(len(objects)), [str(n) for n in range(1, 7)]
    if kind == "position":
        return kind, f"where is the {target.colour} {target.shape}?", target.position(image_size), [
            "center"] + [f"{r} {c}" for r in ROWS for c in COLUMNS if (r, c) != ("middle", "center")]
    colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
    present = any(o.colour == colour and o.shape == shape for o in objects)
    return kind, f"is there a {colour} {shape}?", "yes" if present else "no", ["yes", "no"]


def build_vqa(
    num_train: int = 4000, num_validation: int = 500, num_test: int = 500, image_size: int = 96, seed: int = 0,
    annotator_accuracy: float = 0.85,
) -> DatasetDict:
    """Questions about colour, shape, count, position and existence, each with 10 annotator answers."""
    features = Features({"image": Image(), "question": Value("string"), "question_id": Value("int64"),
                         "question_type": Value("string"), "answers": Sequence(Value("string"), length=10),
                         "answer": Value("string")})

    def make(rng, split, index):
        objects = sample_scene(rng, image_size, int(rng.integers(1, 5)), radius_range=(0.1, 0.2))
        # questions must be answerable: keep colours and shapes unique in the scene
        unique = []
        for obj in objects:
            if obj.colour not in {o.colour for o in unique} and obj.shape not in {o.shape for o in unique}:
                unique.append(obj)
        kind, question, answer, options = _question(rng, unique, image_size)
        wrong = [o for o in options if o != answer]
        answers = [answer if rng.random() < annotator_accuracy else str(rng.choice(wrong)) for _ in range(10)]
        return {"image": png(render(unique, image_size, rng)), "question": question,
                "question_id": SPLITS.index(split) * 10**7 + index, "question_type": kind, "answers": answers,
                "answer": answer}

    return build_splits("vqa", make, features, _sizes(num_train, num_validation, num_test), seed)


def _motion(obj: ShapeObject, action: str, step: float, image_size: int) -> ShapeObject:
    """The object after `step` in [0, 1] of the clip's action."""
    travel = image_size * 0.35
    moved = ShapeObject(**{**obj.__dict__})
    if action == "moving left":
        moved.cx = obj.cx - travel * step
    elif action == "moving right":
        moved.cx = obj.cx + travel * step
    elif action == "moving up":
        moved.cy = obj.cy - travel * step
    elif action == "moving down":
        moved.cy = obj.cy + travel * step
    elif action == "growing":
        moved.radius = obj.radius * (1 + 1.2 * step)
    elif action == "shrinking":
        moved.radius = obj.radius * (1 - 0.6 * step)
    elif action == "rotating":
        moved.angle = obj.angle + np.pi / 2 * step
    return moved


def _clip_start(rng: np.random.Generator, action: str, image_size: int) -> ShapeObject:
    """A start state from which the whole action stays inside the frame."""
    travel, shapes = image_size * 0.35, ("square", "triangle", "star", "cross") if action == "rotating" else SHAPES
    obj = sample_object(rng, image_size, shapes=shapes, radius_range=(0.1, 0.14) if action == "growing" else (0.1, 0.16))
    low, high = obj.radius + 1, image_size - obj.radius - 1
    if action == "moving left":
        obj.cx = float(rng.uniform(low + travel, high))
    elif action == "moving right":
        obj.cx = float(rng.uniform(low, high - travel))
    elif action == "moving up":
        obj.cy = float(rng.uniform(low + travel, high))
    elif action == "moving down":
        obj.cy = float(rng.uniform(low, high - travel))
    elif action == "growing":
        grown = obj.radius * 2.2 + 1
        obj.cx, obj.cy = (float(rng.uniform(grown, image_size - grown)) for _ in range(2))
    return obj


def build_video(
    num_train: int = 700, num_validation: int = 140, num_test: int = 140, image_size: int = 64, num_frames: int = 8,
    seed: int = 0,
) -> DatasetDict:
    """Clips of one shape moving left/right/up/down, growing, shrinking or rotating, with captions."""
    features = Features({"frames": Sequence(Image()), "label": ClassLabel(names=list(ACTIONS)),
                         "caption": Value("string")})

    def make(rng, split, index):
        label = index % len(ACTIONS)
        action = ACTIONS[label]
        start = _clip_start(rng, action, image_size)
        backdrop = background(rng, image_size)
        frames = []
        for t in range(num_frames):
            obj = _motion(start, action, t / max(num_frames - 1, 1), image_size)
            frame = backdrop.copy()
            frame[shape_mask(obj, image_size)] = COLOURS[obj.colour]
            frames.append(png(np.clip(frame, 0, 255).astype(np.uint8)))
        return {"frames": frames, "label": label, "caption": f"a {start.colour} {start.shape} {action}"}

    return build_splits("video", make, features, _sizes(num_train, num_validation, num_test), seed)


# ----------------------------------------------------------------------------------------------------------------------
# Florence-2 multi-task rows
# ----------------------------------------------------------------------------------------------------------------------
# Florence-2 tasks of `build_florence2`; "<VQA>" names free-text question answering (its prompt is the bare question,
# as Florence-2 fine-tunes on VQA).
FLORENCE2_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<OD>", "<CAPTION_TO_PHRASE_GROUNDING>",
                   "<REFERRING_EXPRESSION_SEGMENTATION>", "<REGION_TO_CATEGORY>", "<VQA>")
# Polygon vertices (polar angle, radius as a fraction of the object's radius) of each shape in its own frame, from
# the boundary functions of `shape_mask`: the corners of the polygonal shapes, 12 points around the round ones (a
# ring's polygon is its outer boundary), the 5 tips and 5 notches of a star.
_ROUND = tuple((2 * np.pi * k / 12, 1.0) for k in range(12))
_STAR = tuple((-np.pi / 2 + np.pi / 5 * k, 1.0 if k % 2 else 0.45) for k in range(10))
SHAPE_VERTICES = {
    "circle": _ROUND, "ring": _ROUND, "star": _STAR,
    "square": tuple((-np.pi / 4 + np.pi / 2 * k, 1.0) for k in range(4)),
    "diamond": tuple((np.pi / 2 * k, 0.75 if k % 2 == 0 else 1.0) for k in range(4)),
    "triangle": tuple((-np.pi / 2 + 2 * np.pi / 3 * k, 1.0) for k in range(3)),
    "hexagon": tuple((np.pi / 3 * k, 1.0) for k in range(6)),
}
# The cross's 12 corners in its (u, v) frame.
_CROSS = ((1, -0.33), (1, 0.33), (0.33, 0.33), (0.33, 1), (-0.33, 1), (-0.33, 0.33), (-1, 0.33), (-1, -0.33),
          (-0.33, -0.33), (-0.33, -1), (0.33, -1), (0.33, -0.33))


def outline(obj: ShapeObject) -> list[float]:
    """The object's polygon `[x0, y0, x1, y1, ...]` in pixels (its vertices, rotated and placed)."""
    cos, sin = np.cos(obj.angle), np.sin(obj.angle)
    if obj.shape == "cross":
        frame = list(_CROSS)
    else:
        frame = [(rho * np.cos(theta), rho * np.sin(theta)) for theta, rho in SHAPE_VERTICES[obj.shape]]
    points = []
    for u, v in frame:
        points += [obj.cx + obj.radius * (u * cos - v * sin), obj.cy + obj.radius * (u * sin + v * cos)]
    return [float(p) for p in points]


def box_corners(obj: ShapeObject, image_size: int) -> list[float]:
    """The tight `[x0, y0, x1, y1]` box of the object's pixels."""
    x, y, width, height = tight_box(obj, image_size)
    return [x, y, x + width, y + height]


def _florence2_target(task: str, objects: list[ShapeObject], image_size: int, rng: np.random.Generator):
    """(prompt, target, answers) of one task on a scene whose objects are sorted left to right."""
    size = (image_size, image_size)
    target = objects[rng.integers(len(objects))]
    names = [f"a {o.colour} {o.shape}" for o in objects]
    if task == "<CAPTION>":
        text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    elif task == "<DETAILED_CAPTION>":
        text = ", ".join(detailed_caption(o, image_size) for o in objects)
    elif task == "<OD>":
        text = "".join(o.shape + location_text(box_corners(o, image_size), size) for o in objects)
    elif task == "<CAPTION_TO_PHRASE_GROUNDING>":
        phrase = f"a {target.colour} {target.shape}"
        return task + phrase, phrase + location_text(box_corners(target, image_size), size), []
    elif task == "<REFERRING_EXPRESSION_SEGMENTATION>":
        return task + f"the {target.colour} {target.shape}", location_text(outline(target), size), []
    elif task == "<REGION_TO_CATEGORY>":
        return task + location_text(box_corners(target, image_size), size), target.shape, []
    elif task == "<VQA>":
        _, question, answer, _ = _question(rng, objects, image_size)
        return question, answer, [answer]
    else:
        raise ValueError(f"Unknown Florence-2 Shapes task {task!r}; tasks: {', '.join(FLORENCE2_TASKS)}")
    return task, text, [text]


def build_florence2(
    num_train: int = 14000, num_validation: int = 0, num_test: int = 350, image_size: int = 96, seed: int = 0,
    tasks: tuple[str, ...] = FLORENCE2_TASKS, max_objects: int = 3,
) -> DatasetDict:
    """Florence-2 multi-task rows: `image`, `image_id`, `width`, `height`, `task`, `prompt` (what the processor
    takes: the task token and its text input, or a bare question), `target` (the text the model learns to write,
    boxes and polygons as `<loc_..>` tokens of the image size) and `answers` (the references of text tasks).

    Row `index` of a split asks `tasks[index % len(tasks)]` (repeat a task in `tasks` to weight it) about a scene of 1
    to `max_objects` objects with distinct colours and distinct shapes (so every phrase names one object), listed
    left to right in captions and detections. Boxes are tight; a shape's polygon is its vertices (`outline`)."""
    unknown = sorted(set(tasks) - set(FLORENCE2_TASKS))
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty list of {', '.join(FLORENCE2_TASKS)}; unknown: {unknown}")
    features = Features({
        "image": Image(), "image_id": Value("int64"), "width": Value("int32"), "height": Value("int32"),
        "task": Value("string"), "prompt": Value("string"), "target": Value("string"),
        "answers": Sequence(Value("string")),
    })

    def make(rng, split, index):
        colours = rng.permutation(list(COLOURS))[:max_objects]
        shapes = rng.permutation(list(SHAPES))[:max_objects]
        objects = []
        for colour, shape in zip(colours, shapes):
            placed = sample_scene(rng, image_size, 1, shapes=(shape,), colours=(colour,), radius_range=(0.12, 0.22))
            if all(np.hypot(placed[0].cx - o.cx, placed[0].cy - o.cy) > 1.05 * (placed[0].radius + o.radius)
                   for o in objects):
                objects.append(placed[0])
        objects = sorted(objects[: int(rng.integers(1, max_objects + 1))], key=lambda o: o.cx)
        image = png(render(objects, image_size, rng))
        prompt, target, answers = _florence2_target(tasks[index % len(tasks)], objects, image_size, rng)
        return {"image": image, "image_id": SPLITS.index(split) * 10**7 + index, "width": image_size,
                "height": image_size, "task": tasks[index % len(tasks)], "prompt": prompt, "target": target,
                "answers": answers}

    return build_splits("florence2", make, features, _sizes(num_train, num_validation, num_test), seed)


BUILDERS = {
    "pairs": build_pairs,
    "classification": build_classification,
    "detection": build_detection,
    "vqa": build_vqa,
    "video": build_video,
    "florence2": build_florence2,
}


def count_at_least(minimum: int):
    """An argparse type: an integer >= `minimum`, else a usage error naming the bound (exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate a Florence Shapes task and save it with save_to_disk.")
    parser.add_argument("--task", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-train", type=count_at_least(1), default=None)
    parser.add_argument("--num-validation", type=count_at_least(0), default=None)
    parser.add_argument("--num-test", type=count_at_least(0), default=None)
    parser.add_argument("--image-size", type=count_at_least(16), default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in vars(args).items() if k not in ("task", "output") and v is not None}
    start = time.perf_counter()
    dataset = BUILDERS[args.task](**kwargs)
    elapsed = time.perf_counter() - start
    dataset.save_to_disk(args.output)
    total = sum(len(split) for split in dataset.values())
    print(f"Wrote {args.output}: {', '.join(f'{k} {len(v)}' for k, v in dataset.items())} "
          f"({total / elapsed:.0f} examples/s)")


if __name__ == "__main__":
    main()
