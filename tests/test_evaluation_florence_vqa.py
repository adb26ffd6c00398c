"""Tests of `modeling_florence/evaluation_florence_vqa.py`."""

import math

from modeling_florence.evaluation_florence_vqa import VQAAccuracy, vqa_accuracy


# ----------------------------------------------------------------------------------------------------------------------
# Metric
# ----------------------------------------------------------------------------------------------------------------------
def test_official_vqa_accuracy():
    answers = ["2"] * 2 + ["3"] * 8
    # Leave-one-out: dropping a "2" leaves 1 match (1/3), dropping a "3" leaves 2 (2/3): (2 * 1/3 + 8 * 2/3) / 10.
    assert math.isclose(vqa_accuracy("two", answers), (2 / 3 + 16 / 3) / 10)
    assert vqa_accuracy("3", answers) == 1.0 and vqa_accuracy("4", answers) == 0.0
    assert math.isclose(vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7), (3 * 2 / 3 + 7) / 10)
    metric = VQAAccuracy(keep_in_memory=True)
    result = metric.compute(predictions=["3", "yes", "no"], references=[answers, ["yes"] * 10, ["yes"] * 10],
                            question_types=["count", "existence", "existence"])
    assert math.isclose(result["accuracy"], 100 * 2 / 3)
    assert result["accuracy_count"] == 100.0 and math.isclose(result["accuracy_existence"], 50.0)
