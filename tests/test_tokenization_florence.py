"""Tests of `modeling_florence/tokenization_florence.py`."""

import json
import shutil

import pytest
import torch
from open_clip.tokenizer import tokenize as open_clip_tokenize
from transformers import AutoTokenizer, CLIPTokenizer, AutoProcessor

import modeling_florence as mf
from modeling_florence import FlorenceProcessor, FlorenceTokenizer, default_tokenizer_path

from florence_testing import PLAIN_TEXTS, padded_like_open_clip


CAPTION = "a dog <|endoftext|> a cat <|startoftext|>"
EOS, BOS = 49407, 49406


SPECIAL_TEXTS = [
    "a photo of a <|endoftext|> cat",
    "<|startoftext|>a dog<|endoftext|>",
    "a <start_of_text> b <END_OF_TEXT> c",
    "<end_of_text>",
    "!!<end_of_text> not special after punctuation",
    "x<|endoftext|>y",
    "<start_of_text><end_of_text>",
    "it's <End_Of_Text>'s",
    "word " * 80 + "<end_of_text>",
]


@pytest.fixture(scope="module")
def processor():
    return FlorenceProcessor.from_defaults(image_size=32, num_frames=2)


def break_missing(folder):
    (folder / "tokenizer.json").unlink()


def break_json(folder):
    (folder / "tokenizer.json").write_text('{"model": ')


def break_vocab(folder):
    content = json.loads((folder / "tokenizer.json").read_text())
    content["model"]["vocab"], content["model"]["merges"] = {}, []
    (folder / "tokenizer.json").write_text(json.dumps(content))


def break_merges(folder):
    content = json.loads((folder / "tokenizer.json").read_text())
    content["model"]["merges"] = content["model"]["merges"][:100]
    (folder / "tokenizer.json").write_text(json.dumps(content))


def break_config(folder):
    (folder / "tokenizer_config.json").write_text("not json")


def break_legacy(folder):  # a folder saved with Transformers' CLIPTokenizer class
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "CLIPTokenizer"}))
    (folder / "tokenizer.json").unlink()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_tokenizer_path())


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


def test_special_token_strings_give_open_clip_ids(processor):
    encoded = processor(text=SPECIAL_TEXTS, padding="max_length")
    ours = torch.where(encoded["attention_mask"].bool(), encoded["input_ids"], 0)
    torch.testing.assert_close(ours, open_clip_tokenize(SPECIAL_TEXTS))
    first = encoded["input_ids"][0, : encoded["attention_mask"][0].sum()].tolist()
    assert first.count(49407) == 1 and first[-1] == 49407  # the literal does not end the caption early


def test_florence_tokenizer_reads_special_strings_as_text(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tokenizer, FlorenceTokenizer)
    ids = tokenizer("a <|endoftext|> cat")["input_ids"]
    assert ids.count(49407) == 1 and ids[-1] == 49407


@pytest.mark.parametrize(
    "damage, message",
    [(break_missing, "tokenizer.json is missing"), (break_json, "tokenizer.json is not readable JSON"),
     (break_vocab, "tokenizer.json has no BPE vocabulary"), (break_merges, "tokenizer.json.*wrong merges"),
     (break_config, "tokenizer_config.json is not readable JSON"), (break_legacy, "tokenizer.json is missing")],
)
def test_broken_tokenizer_folders_fail_naming_the_file(processor, tmp_path, damage, message):
    processor.save_pretrained(tmp_path / "good")
    shutil.copytree(tmp_path / "good", tmp_path / "bad")
    damage(tmp_path / "bad")
    loaders = [FlorenceProcessor.from_pretrained, AutoProcessor.from_pretrained]
    # AutoTokenizer reads tokenizer_config.json itself before calling our class (a bare JSONDecodeError), and for a
    # legacy folder it loads Transformers' own CLIPTokenizer: the two cases only our loaders can name the file in
    if damage not in (break_legacy, break_config):
        loaders.append(AutoTokenizer.from_pretrained)
    for loader in loaders:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            loader(tmp_path / "bad")
    assert len(FlorenceProcessor.from_pretrained(tmp_path / "good").tokenizer) == 49408


def test_shipped_tokenizer_matches_open_clip_ids(tokenizer):
    assert (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id) == (49408, 49406, 49407)
    encoded = tokenizer(PLAIN_TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ours = padded_like_open_clip(encoded["input_ids"], encoded["attention_mask"])
    torch.testing.assert_close(ours, open_clip_tokenize(PLAIN_TEXTS))


def test_truncation_keeps_end_of_text_last(tokenizer):
    encoded = tokenizer(["word " * 120], truncation=True, max_length=77, return_tensors="pt")["input_ids"][0]
    assert encoded.shape[0] == 77 and encoded[0] == 49406 and encoded[-1] == 49407
