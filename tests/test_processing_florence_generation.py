"""FlorenceGenerationProcessor: Transformers' Florence-2 tasks and prompt ids, location quantisation, parsing equal to
Transformers' `post_process_generation`, detection formats, user text as plain text, and bad input."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Florence2Processor

from modeling_florence import (
    FlorenceGenerationProcessor,
    FlorenceGenerationTokenizer,
    count_partial_objects,
    dequantize,
    location_text,
    quantize,
)
from modeling_florence.processing_florence_generation import DEFAULT_POST_PROCESSOR_CONFIG

IMAGE_TOKENS = 5
SIZE = (1000, 500)  # (width, height): bin centres are never integers, so Transformers' int() truncation is exact
EXAMPLE_INPUT = {
    "<CAPTION_TO_PHRASE_GROUNDING>": "a red circle and a blue star",
    "<REFERRING_EXPRESSION_SEGMENTATION>": "the big green cross",
    "<OPEN_VOCABULARY_DETECTION>": "star",
}
REGION = "<loc_100><loc_200><loc_500><loc_700>"


@pytest.fixture(scope="module")
def processors():
    ours = FlorenceGenerationProcessor.from_defaults(image_size=32, image_seq_length=IMAGE_TOKENS)
    theirs = Florence2Processor(image_processor=ours.image_processor, tokenizer=ours.tokenizer,
                                post_processor_config=DEFAULT_POST_PROCESSOR_CONFIG)
    return ours, theirs


def image(width=50, height=40, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_the_tasks_are_transformers_own(processors):
    ours, theirs = processors
    assert ours.tasks_answer_post_processing_type == theirs.tasks_answer_post_processing_type
    assert ours.task_prompts_without_inputs == theirs.task_prompts_without_inputs
    assert ours.task_prompts_with_input == theirs.task_prompts_with_input
    assert len(ours.tasks) == 15


def test_prompt_ids_equal_transformers_for_every_task(processors):
    ours, theirs = processors
    for task in ours.tasks:
        text = task + (REGION if task.startswith("<REGION_TO_") else EXAMPLE_INPUT.get(task, ""))
        if task in ours.task_prompts_with_input and not task.startswith("<REGION_TO_") and task not in EXAMPLE_INPUT:
            text = task + "a shape"
        a = ours(images=image(), text=text)
        b = theirs(images=image(), text=text, return_tensors="pt")
        assert a["input_ids"].tolist() == b["input_ids"].tolist(), task
        assert torch.equal(a["pixel_values"], b["pixel_values"])
    free = "what colour is the circle?"
    expected = theirs(images=image(), text=free, return_tensors="pt")["input_ids"].tolist()
    assert ours(images=image(), text=free)["input_ids"].tolist() == expected


def test_literal_special_tokens_in_user_text_are_plain_text(processors):
    ours, _ = processors
    tokenizer = ours.tokenizer
    specials = {tokenizer.image_token_id, *tokenizer.convert_tokens_to_ids(["<loc_12>", "<od>", "</od>", "<poly>"])}
    for text in ("<CAPTION_TO_PHRASE_GROUNDING>the <loc_12> and <od> next to <image>",
                 "is <loc_12><od></od><poly> here <image>?"):
        ids = ours(images=image(), text=text)["input_ids"][0].tolist()
        assert ids.count(tokenizer.image_token_id) == IMAGE_TOKENS
        assert not specials & set(ids[IMAGE_TOKENS:]), tokenizer.convert_ids_to_tokens(ids)
        # the same characters as a tokenizer without added tokens reads them
        assert "loc</w>" in tokenizer.convert_ids_to_tokens(ids)
    region = ours(images=image(), text="<REGION_TO_CATEGORY>" + REGION)["input_ids"][0].tolist()
    assert tokenizer.convert_tokens_to_ids("<loc_100>") in region  # a region prompt's locations stay tokens


def test_quantisation_floors_clamps_and_dequantises_at_bin_centres():
    assert quantize([0, 0.64, 639.99, 640, -3, 1e9], (640, 480)) == [0, 1, 999, 999, 0, 999]
    assert quantize([0.99, 1.0], (1000, 1000)) == [0, 1]
    assert quantize([479.5, 240], (640, 480))[1::2] == [500]
    assert dequantize([0, 0, 999, 999], (1000, 500)) == [0.5, 0.25, 999.5, 499.75]
    for value in np.linspace(0, 639.9, 57):  # a bin centre quantises back to its bin
        (b,) = quantize([value], (640, 480))
        assert quantize(dequantize([b], (640, 480)), (640, 480)) == [b]
    assert location_text([10, 20, 30, 40], (100, 100)) == "<loc_100><loc_200><loc_300><loc_400>"
    with pytest.raises(ValueError, match="image size must be positive"):
        quantize([1, 2], (0, 10))


PARSE_CASES = {
    "<OD>": "red circle<loc_100><loc_200><loc_300><loc_400>blue star<loc_5><loc_6><loc_700><loc_800>"
            "blue star<loc_50><loc_60><loc_70><loc_80>",
    "<DENSE_REGION_CAPTION>": "a small red circle<loc_1><loc_2><loc_3><loc_4>",
    "<REGION_PROPOSAL>": "<loc_1><loc_2><loc_3><loc_4><loc_10><loc_20><loc_30><loc_40>",
    "<CAPTION_TO_PHRASE_GROUNDING>": "a red circle<loc_100><loc_200><loc_300><loc_400>a blue star"
                                     "<loc_5><loc_6><loc_7><loc_8><loc_9><loc_10><loc_11><loc_12>",
    "<REFERRING_EXPRESSION_SEGMENTATION>": "<loc_100><loc_200><loc_300><loc_200><loc_300><loc_400><loc_100><loc_400>",
    "<REGION_TO_SEGMENTATION>": "<poly><loc_1><loc_2><loc_30><loc_2><loc_30><loc_40></poly><poly><loc_5><loc_6>"
                                "<loc_50><loc_6><loc_50><loc_60></poly>",
    "<OCR_WITH_REGION>": "STOP<loc_1><loc_2><loc_3><loc_2><loc_3><loc_4><loc_1><loc_4>GO<loc_10><loc_20><loc_30>"
                         "<loc_20><loc_30><loc_40><loc_10><loc_40>",
    "<OCR>": "STOP GO",
    "<CAPTION>": "a red circle above a blue star",
}
OPEN_VOCABULARY = ["star<loc_1><loc_2><loc_3><loc_4>", "star<poly><loc_1><loc_2><loc_30><loc_2><loc_30><loc_40></poly>"]


def truncated(value):
    """Our floats as Transformers' ints (it casts the bin centres with int())."""
    if isinstance(value, float):
        return int(value)
    if isinstance(value, list):
        return [truncated(item) for item in value]
    if isinstance(value, dict):
        return {key: truncated(item) for key, item in value.items()}
    return value


def test_parsing_equals_transformers_post_process_generation(processors):
    ours, theirs = processors
    cases = list(PARSE_CASES.items()) + [("<OPEN_VOCABULARY_DETECTION>", text) for text in OPEN_VOCABULARY]
    for task, text in cases:
        expected = theirs.post_process_generation(text=text, task=task, image_size=SIZE)
        actual = ours.post_process_generation(text=text, task=task, image_size=SIZE)
        assert truncated(actual) == expected, task
    boxes = ours.post_process_generation(text=PARSE_CASES["<OD>"], task="<OD>", image_size=SIZE)["<OD>"]["bboxes"]
    assert boxes[0] == [100.5, 100.25, 300.5, 200.25]  # bin centres, as floats
    # from generated ids too (the text they decode to)
    ids = ours.tokenizer.encode(PARSE_CASES["<OD>"], add_special_tokens=False)
    from_ids = ours.post_process_generation(sequence=ids, task="<OD>", image_size=SIZE)
    assert from_ids["<OD>"]["labels"] == ["red circle", "blue star", "blue star"]


def test_partial_objects_are_dropped_and_counted(processors):
    ours, theirs = processors
    cases = {
        "<OD>": ("red circle<loc_1><loc_2><loc_3>blue star<loc_10><loc_20><loc_30><loc_40>", 1, 1),
        "<CAPTION_TO_PHRASE_GROUNDING>": ("a star<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6>", 1, 1),
        "<OCR_WITH_REGION>": ("STOP<loc_1><loc_2><loc_3><loc_2><loc_3>", 0, 1),
        "<REFERRING_EXPRESSION_SEGMENTATION>": ("<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7>", 1, 1),
        "<REGION_TO_SEGMENTATION>": ("<poly><loc_1><loc_2><loc_30><loc_2><loc_30><loc_40><loc_9>", 1, 2),
    }
    for task, (text, objects, dropped) in cases.items():
        result = ours.post_process_generation(text=text, task=task, image_size=SIZE, return_dropped=True)[task]
        found = len(result.get("bboxes", result.get("quad_boxes", result.get("polygons", []))))
        assert (found, result["dropped"]) == (objects, dropped), (task, result)
        theirs.post_process_generation(text=text, task=task, image_size=SIZE)  # Transformers' parser: no crash either
    polygon = ours.post_process_generation(text=cases["<REFERRING_EXPRESSION_SEGMENTATION>"][0],
                                           task="<REFERRING_EXPRESSION_SEGMENTATION>", image_size=SIZE)
    assert len(polygon["<REFERRING_EXPRESSION_SEGMENTATION>"]["polygons"][0][0]) == 6  # the odd coordinate dropped
    assert count_partial_objects("a<loc_1><loc_2><loc_3><loc_4>", "description_with_bboxes") == 0


def test_detection_results_in_pipeline_and_coco_format(processors):
    ours, _ = processors
    parsed = ours.post_process_generation(text=PARSE_CASES["<OD>"], task="<OD>", image_size=SIZE)["<OD>"]
    detections = ours.to_detection_results(parsed)
    assert detections[0] == {"score": 1.0, "label": "red circle",
                             "box": {"xmin": 100.5, "ymin": 100.25, "xmax": 300.5, "ymax": 200.25}}
    coco = ours.to_coco_results(parsed, image_id=7, label2id={"red circle": 0, "blue star": 1})
    assert len(coco) == 3 and coco[0] == {"image_id": 7, "category_id": 0, "score": 1.0,
                                          "bbox": [100.5, 100.25, 200.0, 100.0]}
    assert ours.to_coco_results(parsed, image_id=7, label2id={"blue star": 1})[0]["category_id"] == 1
    open_vocabulary = ours.post_process_generation(text=OPEN_VOCABULARY[0], task="<OPEN_VOCABULARY_DETECTION>",
                                                   image_size=SIZE)["<OPEN_VOCABULARY_DETECTION>"]
    assert [d["label"] for d in ours.to_detection_results(open_vocabulary)] == ["star"]


def test_shipped_tokenizer_has_the_florence2_tokens_offline(tmp_path):
    tokenizer = FlorenceGenerationTokenizer.from_defaults()
    assert tokenizer.image_token_id == 49408
    assert tokenizer.convert_tokens_to_ids("<loc_999>") == 49408 + 1000
    assert tokenizer("a photo of a cat", add_special_tokens=False)["input_ids"] == [320, 1125, 539, 320, 2368]
    processor = FlorenceGenerationProcessor.from_defaults(image_size=32, image_seq_length=IMAGE_TOKENS)
    processor.save_pretrained(tmp_path)
    loaded = FlorenceGenerationProcessor.from_pretrained(tmp_path)
    assert type(loaded.tokenizer) is FlorenceGenerationTokenizer and len(loaded.tokenizer) == len(tokenizer)
    prompt = "<CAPTION_TO_PHRASE_GROUNDING>a red circle"
    assert torch.equal(loaded(images=image(), text=prompt)["input_ids"], processor(images=image(), text=prompt)["input_ids"])


def test_images_come_as_one_image_a_list_or_a_datasets_column(processors):
    """A `datasets` column of images (what `dataset["image"]` gives on recent releases) counts as one image per row."""
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    ours, _ = processors
    rows = Dataset.from_dict({"image": [image(), image()]}, features=Features({"image": ImageFeature()}))
    batch = ours(images=rows["image"], text=["<OD>", "<CAPTION>"])
    assert batch["pixel_values"].shape[0] == 2 and batch["input_ids"].shape[0] == 2
    assert torch.equal(ours(images=[image()], text="<OD>")["input_ids"], ours(images=image(), text="<OD>")["input_ids"])


def test_bad_input_is_a_clear_error(processors):
    ours, _ = processors
    with pytest.raises(ValueError, match="Unknown task <DETECT>"):
        ours(images=image(), text="<DETECT>")
    for task in ("<CAPTION_TO_PHRASE_GROUNDING>", "<REFERRING_EXPRESSION_SEGMENTATION>", "<OPEN_VOCABULARY_DETECTION>"):
        with pytest.raises(ValueError, match=f"Task {task} needs text input"):
            ours(images=image(), text=task + "  ")
    with pytest.raises(ValueError, match="takes no text input"):
        ours(images=image(), text="<OD>cats")
    with pytest.raises(ValueError, match="region_prompt"):
        ours(images=image(), text="<REGION_TO_CATEGORY>the left one")
    assert ours.region_prompt("<REGION_TO_CATEGORY>", [10, 20, 30, 40], (100, 100)) == (
        "<REGION_TO_CATEGORY><loc_100><loc_200><loc_300><loc_400>")
    for empty in (Image.new("RGB", (0, 10)), np.zeros((0, 5, 3), np.uint8), torch.zeros(3, 4, 0)):
        with pytest.raises(ValueError, match="has no pixels"):
            ours(images=empty, text="<OD>")
    with pytest.raises(ValueError, match="2 images and 1 prompts"):
        ours(images=[image(), image()], text=["<OD>"])
    with pytest.raises(ValueError, match="Unknown task"):
        ours.post_process_generation(text="x", task="<FOO>", image_size=SIZE)
    with pytest.raises(ValueError, match="image_size"):
        ours.post_process_generation(text="x", task="<OD>", image_size=None)
