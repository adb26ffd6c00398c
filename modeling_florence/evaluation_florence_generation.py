# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""The metrics the Florence-2 paper reports per task, computed offline from generated (and parsed) outputs.

Inputs are what `FlorenceGenerationProcessor.post_process_generation` returns (Transformers' Florence-2 formats):
strings for the text tasks, `{"bboxes", "labels"}` for `<OD>` / grounding (`"bboxes_labels"` for
`<OPEN_VOCABULARY_DETECTION>`), `{"polygons": [[[x, y, x, y, ...], ...]], "labels"}` for segmentation (one list of
polygons per object). `score_generation` also takes the processor's `{task: result}` dicts as they are.

- **Text** (`normalize_text`): lowercase, strip, collapse whitespace, drop one trailing period. `exact_match` and
  `anls` compare normalised strings; `vqa_text_accuracy` uses the official VQA normalisation and accuracy
  (`evaluation_florence_vqa.vqa_accuracy`); a single string reference is one annotator, i.e. exact match after that
  normalisation (10 identical answers would score the same).
- **CIDEr** is CIDEr-D of the COCO caption evaluation, computed by `pycocoevalcap`'s `CiderScorer` (n = 1..4,
  sigma 6, x10, clipped counts, Gaussian length penalty, document frequencies from the references of the corpus
  scored). Its PTB tokenizer needs Java, so captions are tokenised here instead: `normalize_text`, then the runs of
  letters and digits (`caption_tokens`). As in COCO, the score depends on the corpus: with one image every n-gram has
  idf 0 and CIDEr is 0, so score a whole evaluation set at once.
- **ANLS** is the DocVQA definition: per question, the best over its answers of `1 - NL` (NL = Levenshtein distance /
  length of the longer string), where an answer with `NL >= threshold` scores 0.
- **Grounding** is Recall@1 as on Flickr30k Entities: the first generated box is correct if its IoU with any
  reference box is >= threshold; no generated box is wrong.
- **Segmentation** (`polygon_miou`): every polygon of an example (3+ points) is filled with PIL on a (width, height)
  canvas, for prediction and reference; the mask IoU (both empty: 1, one empty: 0) is averaged over examples.
- **Detection** (`detection_map`): COCO box mAP by pycocotools (`coco_detection_metrics`, its `AP`, `AP50`, ...,
  as the detection demo reports them). Generated boxes have no confidence: each
  gets `1 - index / 1000`, `index` its position in the generated sequence, so earlier boxes rank first. Generated
  labels outside the categories (free text the model wrote) are dropped and counted under `unknown_labels`; a
  reference label outside explicit `categories` is a `ValueError`.
"""

import re

import numpy as np
from PIL import Image, ImageDraw

from .evaluation_florence_detection import COCO_METRIC_NAMES, coco_detection_metrics
from .evaluation_florence_vqa import vqa_accuracy

DETECTION_METRIC_NAMES = (*COCO_METRIC_NAMES, "unknown_labels")
DETECTION_TASKS = ("<OD>", "<OPEN_VOCABULARY_DETECTION>")
CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
GENERATION_TASK_METRICS: dict[str, tuple[str, ...]] = {
    **{task: DETECTION_METRIC_NAMES for task in DETECTION_TASKS},
    "<CAPTION_TO_PHRASE_GROUNDING>": ("accuracy",),
    "<REFERRING_EXPRESSION_SEGMENTATION>": ("miou",),
    "<REGION_TO_CATEGORY>": ("accuracy",),
    **{task: ("exact_match", "cider") for task in CAPTION_TASKS},
    "<VQA>": ("accuracy", "anls"),  # free-text question answering: the prompt is the bare question
}
_WORD = re.compile(r"[^\W_]+")
_LOCATION = re.compile(r"<loc_\d+>")


# ----------------------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------------------
def _check_lengths(predictions, references, name: str = "references") -> None:
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions and {len(references)} {name}: pass one per prediction, "
                         "in the same order")
    if len(predictions) == 0:
        raise ValueError(f"Got no predictions: pass at least one prediction and its {name}")


def _reference_lists(references) -> list[list[str]]:
    """Each reference as a list of acceptable answers (a string is one answer)."""
    lists = [[reference] if isinstance(reference, str) else list(reference) for reference in references]
    for index, answers in enumerate(lists):
        if not answers:
            raise ValueError(f"references[{index}] has no answer: pass at least one reference string per prediction")
    return lists


def _parsed(item, name: str, index: int, key: str) -> dict:
    if not isinstance(item, dict) or key not in item:
        raise ValueError(f"{name}[{index}] must be a parsed result with {key!r} (post_process_generation's format), "
                         f"got {type(item).__name__}")
    return item


def _check_image_sizes(image_sizes, count: int) -> list[tuple[int, int]]:
    if image_sizes is None or len(image_sizes) != count:
        got = "none" if image_sizes is None else len(image_sizes)
        raise ValueError(f"Got {got} image_sizes for {count} predictions: pass each image's (width, height)")
    sizes = [tuple(int(v) for v in size) for size in image_sizes]
    for index, size in enumerate(sizes):
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"image_sizes[{index}] must be a positive (width, height), got {image_sizes[index]!r}")
    return sizes


# ----------------------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """Lowercase, strip, collapse whitespace, drop one trailing period ("A  Dog. " -> "a dog")."""
    text = " ".join(str(text).lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(predictions: list[str], references: list[str] | list[list[str]]) -> float:
    """Fraction (0..1) of predictions whose normalised text equals one of their normalised references."""
    _check_lengths(predictions, references)
    hits = [normalize_text(p) in {normalize_text(a) for a in answers}
            for p, answers in zip(predictions, _reference_lists(references))]
    return sum(hits) / len(hits)


def caption_tokens(text: str) -> str:
    """CIDEr's tokenisation here (no Java): `normalize_text`, then runs of letters and digits, space-joined."""
    return " ".join(_WORD.findall(normalize_text(text)))


def cider(predictions: list[str], references: list[list[str]]) -> float:
    """CIDEr-D of the corpus (COCO caption evaluation, x10 scale), by `pycocoevalcap`'s `CiderScorer`; document
    frequencies come from these references, so score the whole set at once (a one-image corpus scores 0)."""
    _check_lengths(predictions, references)
    try:
        from pycocoevalcap.cider.cider_scorer import CiderScorer
    except ImportError as error:  # a dependency of the package; missing only in hand-made environments
        raise ImportError("cider needs pycocoevalcap (its CiderScorer; no Java): pip install pycocoevalcap") from error
    scorer = CiderScorer(n=4, sigma=6.0)
    for prediction, answers in zip(predictions, _reference_lists(references)):
        scorer += (caption_tokens(prediction), [caption_tokens(answer) for answer in answers])
    if not any(ref for refs in scorer.crefs for ref in refs):  # no reference word at all: no n-gram to match
        return 0.0
    score, _ = scorer.compute_score()
    return float(score)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between two strings."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _anls_one(prediction: str, answers: list[str], threshold: float) -> float:
    prediction, best = normalize_text(prediction), 0.0
    for answer in answers:
        answer = normalize_text(answer)
        distance = levenshtein(prediction, answer) / max(len(prediction), len(answer), 1)
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best


def anls(predictions: list[str], references: list[str] | list[list[str]], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity (DocVQA): per question the best over its answers of 1 - NL, 0 where
    NL >= threshold; texts are compared after `normalize_text`."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold} (DocVQA uses 0.5)")
    _check_lengths(predictions, references)
    scores = [_anls_one(p, answers, threshold) for p, answers in zip(predictions, _reference_lists(references))]
    return sum(scores) / len(scores)


def vqa_text_accuracy(predictions: list[str], references: list[list[str]] | list[str]) -> float:
    """Mean official VQA accuracy (0..1); a string reference is one annotator (exact match after VQA
    normalisation)."""
    _check_lengths(predictions, references)
    scores = [vqa_accuracy(p, answers) for p, answers in zip(predictions, _reference_lists(references))]
    return sum(scores) / len(scores)


# ----------------------------------------------------------------------------------------------------------------------
# Boxes and polygons
# ----------------------------------------------------------------------------------------------------------------------
def box_iou(a, b) -> float:
    """IoU of two xyxy boxes (0 when the union has no area)."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = max(0.0, ax1 - ax0) * max(0.0, ay1 - ay0) + max(0.0, bx1 - bx0) * max(0.0, by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def grounding_accuracy(predictions: list[dict], references: list[dict], threshold: float = 0.5) -> float:
    """Recall@1 (Flickr30k Entities): an example is correct when its first generated box has IoU >= threshold with
    any reference box; no generated box (or no reference box) is wrong."""
    _check_lengths(predictions, references)
    correct = 0
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        boxes = _parsed(prediction, "predictions", index, "bboxes")["bboxes"]
        targets = _parsed(reference, "references", index, "bboxes")["bboxes"]
        correct += bool(boxes) and any(box_iou(boxes[0], target) >= threshold for target in targets)
    return correct / len(predictions)


def _polygons(parsed: dict) -> list:
    """The flat polygons of a parsed result: each object's list of polygons (or a bare polygon)."""
    polygons = []
    for item in parsed["polygons"]:
        is_polygon = len(item) > 0 and not isinstance(item[0], (list, tuple))
        polygons.extend([item] if is_polygon else item)
    return polygons


def rasterize_polygons(polygons, size: tuple[int, int]) -> np.ndarray:
    """Boolean (height, width) mask of flat polygons `[x, y, x, y, ...]` filled with PIL; under 3 points ignored."""
    canvas = Image.new("1", tuple(size), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = [(float(x), float(y)) for x, y in zip(polygon[0::2], polygon[1::2])]
        if len(points) >= 3:
            draw.polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree (1.0)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def polygon_miou(predictions: list[dict], references: list[dict], image_sizes: list[tuple[int, int]]) -> float:
    """Mean over examples of the IoU of all predicted vs all reference polygons, rasterised at (width, height)."""
    _check_lengths(predictions, references)
    sizes = _check_image_sizes(image_sizes, len(predictions))
    scores = []
    for index, (prediction, reference, size) in enumerate(zip(predictions, references, sizes)):
        predicted = rasterize_polygons(_polygons(_parsed(prediction, "predictions", index, "polygons")), size)
        target = rasterize_polygons(_polygons(_parsed(reference, "references", index, "polygons")), size)
        scores.append(mask_iou(predicted, target))
    return sum(scores) / len(scores)


# ----------------------------------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------------------------------
def _labels(parsed: dict) -> list[str]:
    return list(parsed.get("labels", parsed.get("bboxes_labels", [])))


def _xywh(box) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def generation_ground_truth(references: list[dict], image_sizes: list[tuple[int, int]],
                            categories: list[str]) -> dict:
    """COCO ground truth of parsed references (`bboxes` xyxy + `labels`); image i has id i, category k id k."""
    label2id = {name: index for index, name in enumerate(categories)}
    images, annotations = [], []
    for image_id, (reference, (width, height)) in enumerate(zip(references, image_sizes)):
        images.append({"id": image_id, "width": width, "height": height})
        for box, label in zip(_parsed(reference, "references", image_id, "bboxes")["bboxes"], _labels(reference)):
            if label not in label2id:
                raise ValueError(f"references[{image_id}] has the label {label!r}, not among categories: add it to "
                                 "categories, or leave categories=None (the reference labels)")
            x, y, w, h = _xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [x, y, w, h],
                                "category_id": label2id[label], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": index, "name": name} for index, name in enumerate(categories)]}


def generation_results(predictions: list[dict], categories: list[str]) -> tuple[list[dict], int]:
    """COCO results of parsed predictions, scored `1 - index / 1000` by position in the generated sequence, and the
    number of boxes dropped for a label outside `categories`."""
    label2id = {name: index for index, name in enumerate(categories)}
    results, unknown = [], 0
    for image_id, prediction in enumerate(predictions):
        boxes = _parsed(prediction, "predictions", image_id, "bboxes")["bboxes"]
        for index, (box, label) in enumerate(zip(boxes, _labels(prediction))):
            if label not in label2id:
                unknown += 1
                continue
            results.append({"image_id": image_id, "category_id": label2id[label], "bbox": _xywh(box),
                            "score": 1.0 - index / 1000})
    return results, unknown


def detection_map(predictions: list[dict], references: list[dict], image_sizes: list[tuple[int, int]],
                  categories: list[str] | None = None) -> dict:
    """COCO box metrics of generated detections (`coco_detection_metrics`' names: AP, AP50, ...)
    and `unknown_labels`; categories default to the sorted reference labels."""
    _check_lengths(predictions, references)
    sizes = _check_image_sizes(image_sizes, len(predictions))
    if categories is None:
        categories = sorted({label for index, ref in enumerate(references)
                             for label in _labels(_parsed(ref, "references", index, "bboxes"))})
    ground_truth = generation_ground_truth(references, sizes, list(categories))
    results, unknown = generation_results(predictions, list(categories))
    metrics = coco_detection_metrics(ground_truth, results)
    metrics.update(unknown_labels=unknown)
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# Per task
# ----------------------------------------------------------------------------------------------------------------------
def _unwrap(item, task: str):
    """post_process_generation's `{task: result}` -> result; anything else as it is."""
    return item[task] if isinstance(item, dict) and len(item) == 1 and task in item else item


def _plain_text(item) -> str | list[str]:
    """Text without location tokens (`<REGION_TO_CATEGORY>` answers carry the region's `<loc_..>`)."""
    if isinstance(item, str):
        return _LOCATION.sub("", item).strip()
    return [_LOCATION.sub("", answer).strip() for answer in item]


def score_generation(task: str, predictions: list, references: list, image_sizes: list | None = None,
                     categories=None) -> dict[str, float]:
    """The paper's metrics of `task` (`GENERATION_TASK_METRICS`) for parsed predictions against references."""
    if task not in GENERATION_TASK_METRICS:
        raise ValueError(f"Unknown task {task!r}: score_generation supports {', '.join(GENERATION_TASK_METRICS)}")
    _check_lengths(predictions, references)
    predictions = [_unwrap(item, task) for item in predictions]
    references = [_unwrap(item, task) for item in references]
    if task in DETECTION_TASKS:
        return detection_map(predictions, references, image_sizes, categories)
    if task == "<CAPTION_TO_PHRASE_GROUNDING>":
        return {"accuracy": grounding_accuracy(predictions, references)}
    if task == "<REFERRING_EXPRESSION_SEGMENTATION>":
        return {"miou": polygon_miou(predictions, references, image_sizes)}
    predictions, references = [_plain_text(p) for p in predictions], [_plain_text(r) for r in references]
    if task == "<REGION_TO_CATEGORY>":
        return {"accuracy": exact_match(predictions, references)}
    if task in CAPTION_TASKS:
        return {"exact_match": exact_match(predictions, references), "cider": cider(predictions, references)}
    return {"accuracy": vqa_text_accuracy(predictions, references), "anls": anls(predictions, references)}


__all__ = [
    "GENERATION_TASK_METRICS",
    "anls",
    "box_iou",
    "caption_tokens",
    "cider",
    "detection_map",
    "exact_match",
    "grounding_accuracy",
    "levenshtein",
    "normalize_text",
    "polygon_miou",
    "rasterize_polygons",
    "score_generation",
    "vqa_text_accuracy",
]
