# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""VQA accuracy, the official way, as an offline `evaluate` metric.

The official VQA accuracy of a predicted answer against 10 annotators is the average, over the 10 ways of leaving one
annotator out, of `min(1, matches among the other 9 / 3)`, after normalising every answer (`normalize_answer`).
`VQAAccuracy` reports it overall and per question type, in percent.
"""

from collections import defaultdict
from collections.abc import Sequence

import datasets
import evaluate

from .processing_florence_vqa import normalize_answer


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy (0..1) of one prediction: mean over leave-one-annotator-out subsets of
    min(1, matches / 3)."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one annotator answer")
    predicted = normalize_answer(prediction)
    matches = [normalize_answer(answer) == predicted for answer in answers]
    total = sum(matches)
    if len(answers) == 1:
        return float(total)
    return sum(min(1.0, (total - match) / 3.0) for match in matches) / len(answers)


class VQAAccuracy(evaluate.Metric):
    """`compute(predictions=[str], references=[[str] * 10], question_types=[str] (optional))` ->
    `{"accuracy": %, "accuracy_<type>": % ...}` with the official VQA accuracy. Works offline."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Official VQA accuracy: average over leave-one-annotator-out subsets of min(1, matches/3).",
            citation="Antol et al., VQA: Visual Question Answering, ICCV 2015; Goyal et al., VQAv2, CVPR 2017.",
            inputs_description="predictions: one answer string per question; references: its annotator answers.",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references, question_types=None) -> dict[str, float]:
        if question_types is not None and len(question_types) != len(predictions):
            raise ValueError(f"Got {len(question_types)} question types for {len(predictions)} predictions")
        scores = [vqa_accuracy(p, r) for p, r in zip(predictions, references)]
        results = {"accuracy": 100.0 * sum(scores) / max(len(scores), 1)}
        if question_types is not None:
            per_type = defaultdict(list)
            for kind, score in zip(question_types, scores):
                per_type[kind].append(score)
            for kind in sorted(per_type):
                results[f"accuracy_{kind}"] = 100.0 * sum(per_type[kind]) / len(per_type[kind])
        return results


__all__ = ["VQAAccuracy", "vqa_accuracy"]
