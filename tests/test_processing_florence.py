"""UniCL labels come from the token ids the text tower reads: captions with identical (truncated) ids are positives
of each other, in the processor, in `text_labels` (the pretraining collator's) and across processes."""

import torch

import modeling_florence as mf
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
