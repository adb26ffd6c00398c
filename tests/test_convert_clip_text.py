"""Tests of `conversion/convert_clip_text.py`."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from conversion.convert_clip_text import convert_clip_text, main, main as convert_clip_text_main
from modeling_florence import FlorenceTextModel
from florence_testing import randomize_


@pytest.fixture
def clip_folder(tmp_path):
    config = CLIPTextConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                            num_attention_heads=4, max_position_embeddings=20, eos_token_id=999, bos_token_id=998)
    CLIPTextModel(config).save_pretrained(tmp_path / "clip")
    return tmp_path / "clip"


def tokens(batch=3, length=12, vocab=1000, eos=999):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, vocab - 2, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row, end in enumerate([length - 1, 6, 3][:batch]):
        input_ids[row, end] = eos
        input_ids[row, end + 1 :] = 0
        attention_mask[row, end + 1 :] = 0
    return input_ids, attention_mask


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


def test_clip_text_from_transformers_matches(tmp_path):
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=20, eos_token_id=999, bos_token_id=998, pad_token_id=0,
    )
    reference = randomize_(CLIPTextModel(config)).eval()
    reference.save_pretrained(tmp_path / "clip")
    convert_clip_text_main(["--checkpoint", str(tmp_path / "clip"), "--output", str(tmp_path / "out")])
    model = FlorenceTextModel.from_pretrained(tmp_path / "out").eval()
    assert model.config.num_attention_heads == 4 and model.config.hidden_act == "quick_gelu"
    input_ids, attention_mask = tokens()
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        actual = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)
    for ours, theirs in zip(actual.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_clip_text_from_open_clip_matches(tmp_path):
    from open_clip.transformer import TextTransformer

    torch.manual_seed(0)
    reference = TextTransformer(context_length=20, vocab_size=1000, width=64, heads=4, layers=2, output_dim=32)
    reference = randomize_(reference).eval()  # open_clip's default activation here is nn.GELU
    torch.save(reference.state_dict(), tmp_path / "open_clip.pt")
    model = convert_clip_text(tmp_path / "open_clip.pt", hidden_act="gelu", num_attention_heads=4, eos_token_id=999)
    input_ids, _ = tokens(length=20)  # open_clip always runs the full context
    with torch.no_grad():
        expected = reference(input_ids)
        actual = model(input_ids=input_ids).pooler_output @ reference.text_projection
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_clip_text_conversion_refuses_missing_layers_and_inconsistent_heads(tmp_path):
    import json

    config = CLIPTextConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=20, eos_token_id=999, bos_token_id=998)
    CLIPTextModel(config).save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match=r"Inconsistent num_attention_heads: .* give 2 .* declares 4"):
        convert_clip_text(tmp_path / "clip", num_attention_heads=2)
    weights = load_file(tmp_path / "clip" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".layers.2." not in k}, tmp_path / "clip" / "model.safetensors")
    with pytest.raises(ValueError, match=r"Inconsistent num_hidden_layers: .* give 2 .* declares 3"):
        convert_clip_text(tmp_path / "clip")
    save_file({k: v for k, v in weights.items() if ".layers.1." not in k}, tmp_path / "gap.safetensors")
    with pytest.raises(ValueError, match=r"no layer \[1\] \(found \[0, 2\]\)"):
        convert_clip_text(tmp_path / "gap.safetensors")
    with pytest.raises(SystemExit) as exited:
        convert_clip_text_main(["--checkpoint", str(tmp_path / "gap.safetensors"), "--output", str(tmp_path / "o")])
    assert exited.value.code != 0 and not (tmp_path / "o").exists()
    assert json.loads((tmp_path / "clip" / "config.json").read_text())["num_hidden_layers"] == 3
