"""Tests of `modeling_florence/evaluation_florence_generation.py`."""

import pytest

from modeling_florence.evaluation_florence_generation import (
    GENERATION_TASK_METRICS,
    anls,
    box_iou,
    cider,
    detection_map,
    exact_match,
    grounding_accuracy,
    levenshtein,
    normalize_text,
    polygon_miou,
    score_generation,
    vqa_text_accuracy,
)


def rectangle(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def square(x0, y0, side):
    return rectangle(x0, y0, x0 + side, y0 + side)


# -- text --------------------------------------------------------------------------------------------------------------
def test_normalize_text_and_exact_match():
    assert normalize_text("  A  Dog\tRuns. ") == "a dog runs"
    assert normalize_text("e.g.") == "e.g"  # one trailing period only
    assert exact_match(["A dog.", "cat", "bird"], ["a dog", ["a cat", "Cat"], "fish"]) == pytest.approx(2 / 3)


def test_cider_known_values():
    references = [["a b c d"], ["e f g x"]]
    # Disjoint vocabularies: every n-gram has df 1, idf log 2, so CIDEr-D is 10 x mean over n of the count cosine.
    assert cider(["a b c d", "e f g x"], references) == pytest.approx(10.0)
    # Image 2: unigram 3/4, bigram 2/3, trigram 1/2, 4-gram 0; same length, no penalty -> 10 * 1.91667 / 4.
    assert cider(["A b, c d.", "e f g h"], references) == pytest.approx((10.0 + 10 * (0.75 + 2 / 3 + 0.5) / 4) / 2)
    assert cider(["q r s t", "u v w y"], references) == 0.0
    assert cider(["a b c d"], [["a b c d"]]) == 0.0  # one-image corpus: idf 0 everywhere, as in COCO


def test_cider_matches_pycocoevalcap():
    from pycocoevalcap.cider.cider import Cider

    predictions = ["a man riding a horse on a beach", "two dogs play in the snow", "a red car", "a cat on a cat bed"]
    references = [["a man rides a horse along the beach", "man on horse at the sea"],
                  ["two dogs playing in snow", "dogs in the snow"], ["a red car parked on the street"],
                  ["a cat sleeping on its bed", "a cat on a bed", "cat bed with a cat"]]
    expected, _ = Cider().compute_score({i: r for i, r in enumerate(references)},
                                        {i: [p] for i, p in enumerate(predictions)})
    assert cider([p.upper() + "." for p in predictions], references) == pytest.approx(expected)
    assert 0.0 < expected < 10.0


def test_anls_and_vqa_accuracy():
    assert levenshtein("kitten", "sitting") == 3
    assert anls(["invoise"], [["total", "Invoice"]]) == pytest.approx(1 - 1 / 7)  # one-character typo
    assert anls(["abcd"], ["abxy"]) == 0.0  # NL = 0.5 is not below the threshold
    assert anls(["abcd"], ["abxy"], threshold=0.6) == pytest.approx(0.5)
    assert anls(["Yes.", "no"], ["yes", "maybe"]) == pytest.approx(0.5)
    assert vqa_text_accuracy(["Two", "no"], ["2", "yes"]) == pytest.approx(0.5)  # string reference: exact match
    # Leave-one-out over 3 annotators: (1/3 + 1/3 + 2/3) / 3.
    assert vqa_text_accuracy(["red"], [["red", "red", "blue"]]) == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="threshold"):
        anls(["a"], ["a"], threshold=0)


# -- boxes and polygons ------------------------------------------------------------------------------------------------
def test_box_iou_and_grounding_threshold():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 20]) == pytest.approx(0.5)
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    reference = {"bboxes": [[50, 50, 60, 60], [0, 0, 10, 10]], "labels": ["a", "a"]}
    above = {"bboxes": [[3, 0, 13, 10]], "labels": ["a"]}  # IoU 7/13
    below = {"bboxes": [[4, 0, 14, 10]], "labels": ["a"]}  # IoU 6/14
    exact = {"bboxes": [[0, 0, 10, 20]], "labels": ["a"]}  # IoU 0.5 counts
    second = {"bboxes": [[40, 40, 45, 45], [0, 0, 10, 10]], "labels": ["a", "a"]}  # only the first box counts
    empty = {"bboxes": [], "labels": []}
    predictions = [above, below, exact, second, empty]
    assert grounding_accuracy(predictions, [reference] * 5) == pytest.approx(2 / 5)
    assert grounding_accuracy([below], [reference], threshold=0.4) == 1.0


def test_polygon_miou():
    reference = {"polygons": [[square(10, 10, 20)]], "labels": [""]}
    shifted = {"polygons": [[square(20, 10, 20)]], "labels": [""]}  # continuous IoU 10/30
    halves = [[rectangle(10, 10, 20, 30)], [rectangle(20, 10, 30, 30), [1, 1, 5, 5]]]  # 2-point polygon ignored
    two_objects = {"polygons": halves, "labels": ["", ""]}
    empty = {"polygons": [], "labels": []}
    size = [(64, 48)]
    assert polygon_miou([shifted], [reference], size) == pytest.approx(1 / 3, abs=0.03)
    assert polygon_miou([two_objects], [reference], size) == pytest.approx(1.0)
    assert polygon_miou([empty, empty, reference], [empty, reference, reference], size * 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="image_sizes"):
        polygon_miou([reference], [reference], None)


# -- detection ---------------------------------------------------------------------------------------------------------
REFERENCES = [{"bboxes": [[10, 10, 50, 50], [60, 10, 90, 40]], "labels": ["cat", "dog"]},
              {"bboxes": [[5, 5, 40, 60]], "labels": ["dog"]}]
SIZES = [(100, 80), (64, 64)]


def test_detection_map_perfect_missing_and_unknown():
    perfect = detection_map(REFERENCES, REFERENCES, SIZES)
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP50"] == pytest.approx(1.0)
    assert perfect["AP75"] == pytest.approx(1.0) and perfect["unknown_labels"] == 0
    missing = [{"bboxes": REFERENCES[0]["bboxes"][:1], "labels": ["cat"]}, REFERENCES[1]]
    assert detection_map(missing, REFERENCES, SIZES)["AP"] < 1.0
    unknown = [{"bboxes": [[0, 0, 5, 5], *REFERENCES[0]["bboxes"]], "labels": ["a blue thing", "cat", "dog"]},
               {"bboxes": [[5, 5, 40, 60], [1, 1, 2, 2]], "labels": ["dog", "zebra"]}]
    metrics = detection_map(unknown, REFERENCES, SIZES)
    assert metrics["unknown_labels"] == 2 and metrics["AP"] == pytest.approx(1.0)
    with_zebra = detection_map(unknown, REFERENCES, SIZES, categories=["cat", "dog", "zebra"])
    assert with_zebra["unknown_labels"] == 1
    with pytest.raises(ValueError, match="categories"):
        detection_map(REFERENCES, REFERENCES, SIZES, categories=["cat"])


def test_detection_map_ranks_by_generation_order():
    reference = [{"bboxes": [[10, 10, 30, 30], [40, 40, 60, 60]], "labels": ["cat", "cat"]}]
    false_first = [{"bboxes": [[70, 70, 90, 90], [10, 10, 30, 30], [40, 40, 60, 60]], "labels": ["cat"] * 3}]
    false_last = [{"bboxes": [[10, 10, 30, 30], [40, 40, 60, 60], [70, 70, 90, 90]], "labels": ["cat"] * 3}]
    assert detection_map(false_last, reference, [(100, 100)])["AP50"] == pytest.approx(1.0)
    assert detection_map(false_first, reference, [(100, 100)])["AP50"] < 0.9


# -- per task ----------------------------------------------------------------------------------------------------------
def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="2 predictions and 1 references"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="2 predictions and 1 references"):
        cider(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="2 predictions and 1 references"):
        score_generation("<OD>", REFERENCES, REFERENCES[:1], SIZES)
    with pytest.raises(ValueError, match="no predictions"):
        anls([], [])
    with pytest.raises(ValueError, match="<CAPTION_TO_PHRASE_GROUNDING>"):
        score_generation("<OCR_WITH_REGION>", ["a"], ["a"])
    with pytest.raises(ValueError, match="parsed result with 'bboxes'"):
        grounding_accuracy(["a box"], [REFERENCES[0]])


def test_score_generation_dispatch():
    for task in ("<OD>", "<OPEN_VOCABULARY_DETECTION>"):
        assert set(score_generation(task, REFERENCES, REFERENCES, SIZES)) == set(GENERATION_TASK_METRICS[task])
    captions = score_generation("<CAPTION>", ["A cat.", "a dog runs fast"], [["a cat"], ["a dog is running"]])
    assert set(captions) == {"exact_match", "cider"} and captions["exact_match"] == 0.5
    vqa = score_generation("<VQA>", ["two", "Yes"], [["2"] * 10, ["yes"]])
    assert vqa == {"accuracy": pytest.approx(1.0), "anls": pytest.approx(0.5)}


def test_end_to_end_with_parsed_generations():
    from modeling_florence.processing_florence_generation import FlorenceGenerationProcessor

    processor = FlorenceGenerationProcessor.from_defaults(image_size=64, image_seq_length=4)
    size = (200, 100)

    def scored(task, predicted, target, **kwargs):
        parsed = [processor.post_process_generation(text, task=task, image_size=size) for text in (predicted, target)]
        return score_generation(task, parsed[:1], parsed[1:], **kwargs)

    box = "circle<loc_100><loc_100><loc_400><loc_400>"
    assert scored("<OD>", box, box, image_sizes=[size])["AP"] == pytest.approx(1.0)
    assert scored("<OD>", "square" + box[6:], box, image_sizes=[size])["unknown_labels"] == 1
    assert scored("<OPEN_VOCABULARY_DETECTION>", box, box, image_sizes=[size])["AP"] == pytest.approx(1.0)
    assert scored("<CAPTION_TO_PHRASE_GROUNDING>", box, box) == {"accuracy": 1.0}
    polygon = "<loc_100><loc_100><loc_400><loc_100><loc_400><loc_400><loc_100><loc_400>"
    assert scored("<REFERRING_EXPRESSION_SEGMENTATION>", polygon, polygon, image_sizes=[size]) == {"miou": 1.0}
    assert scored("<REGION_TO_CATEGORY>", "Car<loc_1><loc_2><loc_3><loc_4>", "car") == {"accuracy": 1.0}
    assert scored("<CAPTION>", "A dog.", "a dog")["exact_match"] == 1.0
