"""FlorenceProcessor contracts: empty inputs get a clear error, truncated captions no misleading warning."""

import pytest
from PIL import Image
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from modeling_florence import FlorenceProcessor


@pytest.fixture(scope="module")
def processor():
    return FlorenceProcessor.from_defaults(image_size=64)


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
