"""One tokenizer everywhere: the shipped tokenizer folder loads as `FlorenceTokenizer` through `AutoTokenizer`, as a
saved model folder does, so a literal `<|endoftext|>` in a caption is text, never the end-of-text token."""

import json

import pytest
from transformers import AutoTokenizer, CLIPTokenizer

import modeling_florence as mf
from modeling_florence.processing_florence import default_tokenizer_path

CAPTION = "a dog <|endoftext|> a cat <|startoftext|>"
EOS, BOS = 49407, 49406


def test_the_shipped_folder_declares_our_tokenizer():
    config = json.loads((default_tokenizer_path() / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "FlorenceTokenizer" and config["split_special_tokens"] is True


@pytest.mark.parametrize("loader", [AutoTokenizer.from_pretrained, mf.FlorenceTokenizer.from_pretrained])
def test_the_shipped_folder_loads_as_florence_tokenizer_and_reads_special_strings_as_text(loader):
    tokenizer = loader(str(default_tokenizer_path()))
    assert type(tokenizer) is mf.FlorenceTokenizer
    ids = tokenizer(CAPTION)["input_ids"]
    assert ids[0] == BOS and ids[-1] == EOS and EOS not in ids[1:-1] and BOS not in ids[1:-1]


def test_even_transformers_clip_tokenizer_reads_the_folder_the_same_way():
    tokenizer = CLIPTokenizer.from_pretrained(str(default_tokenizer_path()))
    expected = mf.FlorenceTokenizer.from_pretrained(str(default_tokenizer_path()))(CAPTION)["input_ids"]
    assert tokenizer(CAPTION)["input_ids"] == expected


def test_a_saved_model_folder_and_the_shipped_folder_give_the_same_tokenizer(tmp_path):
    mf.FlorenceProcessor.from_defaults(image_size=32).save_pretrained(tmp_path)
    saved, shipped = AutoTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(default_tokenizer_path())
    assert type(saved) is type(shipped) is mf.FlorenceTokenizer
    assert saved(CAPTION)["input_ids"] == shipped(CAPTION)["input_ids"]


def test_long_texts_are_truncated_by_default_with_the_end_id_last():
    tokenizer = AutoTokenizer.from_pretrained(default_tokenizer_path())
    ids = tokenizer(["word " * 200, "short"], padding=True)["input_ids"]
    assert len(ids[0]) == 77 and ids[0][0] == BOS and ids[0][-1] == EOS
    assert len(tokenizer("word " * 200, truncation=False)["input_ids"]) == 202
