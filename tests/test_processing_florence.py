"""Tests of `modeling_florence/processing_florence.py`."""

import io
import urllib.request

import pytest
import torch
from open_clip.tokenizer import tokenize as open_clip_tokenize
from PIL import Image
from transformers import AutoProcessor, AutoImageProcessor, pipeline
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

import modeling_florence as mf
from modeling_florence import FlorenceProcessor, FlorenceImageProcessor, FlorenceModel, load_preset
from modeling_florence.processing_florence import ids_label, text_label, text_labels

from florence_testing import PLAIN_TEXTS, padded_like_open_clip


PREFIX = " ".join(["word"] * 80)  # 80 tokens: past the 75 content positions


@pytest.fixture(scope="module")
def processor():
    return FlorenceProcessor.from_defaults(image_size=64, num_frames=4)


TEXTS_NEEDING_CLEANUP = ["&amp; html &lt;tags&gt;", "Ｆｕｌｌｗｉｄｔｈ ﬁ ligature", "mojibake: schÃ¶n"]


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


def test_processor_and_video_urls_need_the_opt_in(tmp_path, fake_web, video_writer):
    processor = FlorenceProcessor.from_defaults(image_size=32, num_frames=2)
    with pytest.raises(ValueError, match="allow_urls=True"):
        processor(images="https://example.com/cat.png")
    with pytest.raises(ValueError, match="allow_urls=True"):
        processor(videos="https://example.com/clip.mp4")
    assert fake_web == []
    assert processor(images="https://example.com/cat.png", allow_urls=True)["pixel_values"].shape == (1, 3, 32, 32)
    video_writer(tmp_path / "clip.mp4")
    served = (tmp_path / "clip.mp4").read_bytes()
    urllib.request.urlopen = lambda url, timeout=None: io.BytesIO(served)  # monkeypatch restores it
    out = processor(videos="https://example.com/clip.mp4", allow_urls=True)
    assert out["pixel_values_videos"].shape == (1, 2, 3, 32, 32)


def test_processor_cleans_text_like_open_clip(processor):
    texts = PLAIN_TEXTS + TEXTS_NEEDING_CLEANUP
    encoded = processor(text=texts, padding="max_length")
    assert encoded["input_ids"].shape == (len(texts), 77)
    torch.testing.assert_close(
        padded_like_open_clip(encoded["input_ids"], encoded["attention_mask"]), open_clip_tokenize(texts)
    )


def test_unicl_labels_are_stable_and_merge_identical_texts(processor):
    labels = processor(text=["A red circle", "a  red CIRCLE ", "a blue circle"], return_labels=True)["labels"]
    assert labels.dtype == torch.int64 and labels[0] == labels[1] != labels[2]
    assert text_label("a red circle") == 918540978343227445  # fixed forever: labels must not drift across releases
    with pytest.raises(ValueError, match="needs text"):
        processor(images=[Image.new("RGB", (64, 64))], return_labels=True)


def test_processor_roundtrip_auto_classes_and_pipeline(processor, tmp_path):
    torch.manual_seed(0)
    FlorenceModel(load_preset("florence-tiny")).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, FlorenceProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), FlorenceImageProcessor)
    assert reloaded.video_processor.num_frames == 4
    image = Image.new("RGB", (80, 70), (200, 30, 30))
    original = processor(text=["a red square"], images=[image])
    again = reloaded(text=["a red square"], images=[image])
    for key in ("input_ids", "attention_mask", "pixel_values"):
        torch.testing.assert_close(again[key], original[key])
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path))
    scores = classifier(image, candidate_labels=["circle", "square", "star"])
    assert sorted(s["label"] for s in scores) == ["circle", "square", "star"]
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)
