"""`conversion/convert_clip_text.py`: a text tower missing its last layer is refused when anything states the depth
(a folder's config.json, the checkpoint's metadata, `--config`), and the architecture is printed either way."""

import json

import pytest
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from conversion.convert_clip_text import convert_clip_text, main


@pytest.fixture
def clip_folder(tmp_path):
    config = CLIPTextConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                            num_attention_heads=4, max_position_embeddings=20, eos_token_id=999, bos_token_id=998)
    CLIPTextModel(config).save_pretrained(tmp_path / "clip")
    return tmp_path / "clip"


def test_a_missing_last_layer_is_refused_from_metadata_or_config(clip_folder, tmp_path, capsys):
    weights = load_file(clip_folder / "model.safetensors")
    short = {k: v for k, v in weights.items() if ".layers.3." not in k}
    save_file(short, tmp_path / "meta.safetensors", metadata={"text_config": json.dumps({"num_hidden_layers": 4})})
    with pytest.raises(ValueError, match=r"Inconsistent num_hidden_layers: .* give 3 but .*meta\.safetensors's "
                                         r"metadata declares 4"):
        convert_clip_text(tmp_path / "meta.safetensors", num_attention_heads=4)
    assert "CLIP text (transformers) architecture read from the weights: hidden_size=64" in capsys.readouterr().out
    save_file(short, tmp_path / "bare.safetensors")
    (tmp_path / "expected.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 4}}))
    with pytest.raises(SystemExit, match=r"Inconsistent num_hidden_layers: .* give 3 but --config declares 4"):
        main(["--checkpoint", str(tmp_path / "bare.safetensors"), "--output", str(tmp_path / "out"),
              "--config", str(tmp_path / "expected.json")])
    main(["--checkpoint", str(clip_folder), "--output", str(tmp_path / "ok"), "--config", str(tmp_path / "expected.json")])
    assert "layers=4" in capsys.readouterr().out
