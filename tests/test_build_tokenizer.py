"""`conversion/build_tokenizer.py` writes exactly the shipped tokenizer folder: `FlorenceTokenizer`, every file."""

import pytest

from modeling_florence.processing_florence import default_tokenizer_path

pytest.importorskip("open_clip")  # the builder reads the BPE file from the open_clip wheel

from conversion.build_tokenizer import build_tokenizer, main  # noqa: E402


def test_the_builder_writes_the_shipped_folder_byte_for_byte(tmp_path, capsys):
    main(["--output", str(tmp_path)])
    assert "49408 tokens" in capsys.readouterr().out
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (default_tokenizer_path() / name).read_bytes(), name


def test_the_builder_builds_florence_tokenizer():
    from modeling_florence import FlorenceTokenizer

    assert type(build_tokenizer()) is FlorenceTokenizer
