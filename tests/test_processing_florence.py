"""FlorenceProcessor contracts: UniCL labels from the token ids the text tower reads (identical truncated ids are
positives, in the processor, `text_labels` and across processes); empty inputs get a clear error; truncated captions
no misleading warning."""

import pytest
import torch
from PIL import Image
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

import modeling_florence as mf
from modeling_florence import FlorenceProcessor
from modeling_florence.processing_florence import ids_label, text_label, text_labels

PREFIX = " ".join(["word"] * 80)  # 80 tokens: past the 75 content positions


def test_captions_equal_up_to_the_truncation_share_a_label():
    processor = mf.FlorenceProcessor.from_defaults(image_size=32)
    texts = [PREFIX + " a red circle", PREFIX + " a blue star", "a red circle"]
    encoded = processor(text=texts, return_labels=True)
    assert torch.equal(encoded["input_ids"][0], encoded["input_ids"][1])
    labels = encoded["labels"]
    assert labels[0] == labels[1] != labels[2]
    assert labels.tolist() == text_labels(texts).tolist()


def test_captions_with_identical_ids_share_a_label_and_others_do_not():
    processor = mf.FlorenceProcessor.from_defaults(image_size=32)
    texts = ["A red circle.", "a red circle .", "a red circle", "a red circle!"]
    encoded = processor(text=texts, return_labels=True)
    assert torch.equal(encoded["input_ids"][0], encoded["input_ids"][1])
    assert len({tuple(row.tolist()) for row in encoded["input_ids"]}) == len(set(encoded["labels"].tolist())) == 3
    assert encoded["labels"][0] == encoded["labels"][1] == text_label("A red circle.")


def test_labels_follow_the_processors_max_length():
    processor = mf.FlorenceProcessor.from_defaults(image_size=32)
    texts = ["one two three four five", "one two three six seven"]
    labels = processor(text=texts, max_length=5, return_labels=True)["labels"]  # 3 content tokens: equal ids
    assert labels[0] == labels[1] == text_label(texts[0], max_length=5)
    assert text_labels(texts, max_length=5).tolist() == labels.tolist()


def test_plain_word_labels_keep_their_published_values():
    assert text_label("a red circle") == 918540978343227445  # unchanged from earlier releases
    assert ids_label([320, 736, 7117]) == 918540978343227445


@pytest.fixture(scope="module")
def processor():
    return FlorenceProcessor.from_defaults(image_size=64, num_frames=4)


def test_an_empty_text_list_is_refused_clearly(processor):
    with pytest.raises(ValueError, match="text is an empty list"):
        processor(text=[])


@pytest.mark.parametrize("size", [(0, 0), (0, 10), (10, 0)])
def test_an_empty_image_is_refused_clearly(processor, size):
    with pytest.raises(ValueError, match="at least one pixel"):
        processor(images=Image.new("RGB", size))


def test_long_captions_are_truncated_without_the_indexing_warning():
    processor = FlorenceProcessor.from_defaults(image_size=64)  # the tokenizer warns once per instance: a fresh one
    caption = "a red circle next to a blue square " * 40  # ~ 320 tokens
    logger = logging.get_logger("transformers.tokenization_utils_base")
    with CaptureLogger(logger) as captured:
        ids = processor(text=[caption])["input_ids"]
    assert ids.shape[-1] == 77 and "indexing errors" not in captured.out
    with CaptureLogger(logger) as captured:  # without truncation the warning is right, and still given
        processor.tokenize([caption], truncation=False)
    assert "indexing errors" in captured.out
