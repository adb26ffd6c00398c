"""Tests of `conversion/build_tokenizer.py`."""

import pytest
from transformers import AutoTokenizer

from modeling_florence.processing_florence import default_tokenizer_path

pytest.importorskip("open_clip")  # the builder reads the BPE file from the open_clip wheel
from conversion.build_tokenizer import build_tokenizer, main  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_tokenizer_path())


def test_the_builder_writes_the_shipped_folder_byte_for_byte(tmp_path, capsys):
    main(["--output", str(tmp_path)])
    assert "49408 tokens" in capsys.readouterr().out
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (default_tokenizer_path() / name).read_bytes(), name


def test_the_builder_builds_florence_tokenizer():
    from modeling_florence import FlorenceTokenizer

    assert type(build_tokenizer()) is FlorenceTokenizer


def test_builder_reproduces_the_shipped_files(tokenizer, tmp_path):
    built = build_tokenizer()
    built.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").read_text() == (default_tokenizer_path() / "tokenizer.json").read_text()
