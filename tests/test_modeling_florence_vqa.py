"""Tests of `modeling_florence/modeling_florence_vqa.py`."""

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import modeling_florence as mf
from modeling_florence.modeling_florence_vqa import (
    FlorenceFusionLayer,
    sample_negatives,
    sincos_position_embeddings,
    vqa_loss,
)
from modeling_florence.processing_florence_vqa import mask_tokens
from tests.test_common import pixel_inputs, text_inputs, tiny_florence_config, tiny_vqa_config

from florence_testing import assert_one_training_step, build, davit_stage_states


# ----------------------------------------------------------------------------------------------------------------------
# Co-attention layer: against BridgeTower's cross-modal layer and a from-the-paper reference
# ----------------------------------------------------------------------------------------------------------------------
def copy_into_bridgetower(layer: FlorenceFusionLayer, bridge) -> None:
    pairs = {
        "attention.self.query": layer.self_attn.q_proj, "attention.self.key": layer.self_attn.k_proj,
        "attention.self.value": layer.self_attn.v_proj, "attention.output.dense": layer.self_attn.out_proj,
        "attention.output.LayerNorm": layer.self_attn_layer_norm,
        "crossattention.self.query": layer.cross_attn.q_proj, "crossattention.self.key": layer.cross_attn.k_proj,
        "crossattention.self.value": layer.cross_attn.v_proj, "crossattention.output.dense": layer.cross_attn.out_proj,
        "crossattention.output.LayerNorm": layer.cross_attn_layer_norm,
        "intermediate.dense": layer.fc1, "output.dense": layer.fc2, "output.LayerNorm": layer.final_layer_norm,
    }
    for name, source in pairs.items():
        target = bridge.get_submodule(name)
        target.weight.data.copy_(source.weight.data)
        target.bias.data.copy_(source.bias.data)


def paper_reference(layer: FlorenceFusionLayer, x, y, x_mask, y_mask, heads):
    """METER's co-attention layer written out from the paper: post-LN self-attention, cross-attention, FFN."""

    def attend(attn, queries, context, keep):
        def split(t):
            return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

        q, k, v = split(attn.q_proj(queries)), split(attn.k_proj(context)), split(attn.v_proj(context))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~keep[:, None, None, :].bool(), float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(queries.shape)
        return attn.out_proj(out)

    x = layer.self_attn_layer_norm(x + attend(layer.self_attn, x, x, x_mask))
    x = layer.cross_attn_layer_norm(x + attend(layer.cross_attn, x, y, y_mask))
    return layer.final_layer_norm(x + layer.fc2(F.gelu(layer.fc1(x))))


METER_STREAM = {"vision_feature_stages": None, "image_position_embeddings": False}


@pytest.fixture(scope="module")
def processor():
    return mf.FlorenceVQAProcessor.from_defaults(image_size=32, answer_vocabulary=["yes", "no", "red", "2", "circle"])


def images(count):
    return [Image.new("RGB", (40, 36), (30 * i, 90, 200)) for i in range(count)]


# ----------------------------------------------------------------------------------------------------------------------
# Hub export: the VQA folder answers questions with the package blocked
# ----------------------------------------------------------------------------------------------------------------------
REMOTE_VQA = r"""
import json, sys
sys.modules["modeling_florence"] = None
import torch
from PIL import Image
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor
folder = sys.argv[1]
model = AutoModelForVisualQuestionAnswering.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
images = [Image.new("RGB", (40, 36), (30 * i, 90, 200)) for i in range(2)]
inputs = processor(text=["is there a red circle?", "how many shapes?"], images=images)
with torch.no_grad():
    answers = processor.post_process_vqa(model(**inputs), top_k=2)
print("RESULT" + json.dumps({"model": type(model).__name__, "processor": type(processor).__name__, "answers": answers}))
"""


def test_a_roberta_text_encoder_builds_from_its_config():
    from transformers import RobertaModel

    config = tiny_vqa_config(text_config={
        "model_type": "roberta", "vocab_size": 100, "hidden_size": 24, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 40,
    })
    torch.manual_seed(0)
    model = mf.FlorenceForVQA(config).eval()
    assert isinstance(model.text_model, RobertaModel) and model.text_model.pooler is None
    ids = torch.randint(3, 100, (2, 7))
    ids[:, 0] = 0
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=torch.ones_like(ids), **pixel_inputs(2))
    assert output.logits.shape == (2, 5)


# ----------------------------------------------------------------------------------------------------------------------
# Text tower: bidirectional for fusion, causal by default
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_fusion_text_tower_is_bidirectional_and_the_default_stays_causal(implementation):
    inputs = text_inputs(2)
    changed = inputs["input_ids"].clone()
    changed[:, 5] = 1234  # a later token
    for causal in (True, False):
        torch.manual_seed(0)
        config = tiny_florence_config().text_config
        config.causal_attention = causal
        config._attn_implementation = implementation
        tower = mf.FlorenceTextModel(config).eval()
        with torch.no_grad():
            before = tower(**inputs).last_hidden_state
            after = tower(input_ids=changed, attention_mask=inputs["attention_mask"]).last_hidden_state
        early_tokens_moved = not torch.allclose(before[:, :5], after[:, :5], atol=1e-6)
        assert early_tokens_moved == (not causal)
    assert mf.FlorenceTextConfig().causal_attention is True


def test_bidirectional_text_tower_ignores_padding():
    torch.manual_seed(0)
    config = tiny_florence_config().text_config
    config.causal_attention = False
    tower = mf.FlorenceTextModel(config).eval()
    inputs = text_inputs(3)
    row = 2  # padded by two tokens
    length = int(inputs["attention_mask"][row].sum())
    with torch.no_grad():
        padded = tower(**inputs).last_hidden_state[row, :length]
        alone = tower(input_ids=inputs["input_ids"][row : row + 1, :length]).last_hidden_state[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_co_attention_layer_equals_bridgetower_and_the_paper(implementation):
    from transformers import BridgeTowerTextConfig
    from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerBertCrossLayer

    config = tiny_vqa_config()
    config._attn_implementation = implementation
    torch.manual_seed(0)
    layer = FlorenceFusionLayer(config).eval()
    for parameter in layer.parameters():  # non-trivial LayerNorms and biases too
        parameter.data.normal_(0, 0.2)
    bridge_config = BridgeTowerTextConfig(
        hidden_size=32, num_attention_heads=4, intermediate_size=48, hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, layer_norm_eps=config.layer_norm_eps,
    )
    bridge_config._attn_implementation = "eager"
    bridge = BridgeTowerBertCrossLayer(bridge_config).eval()
    copy_into_bridgetower(layer, bridge)

    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 6, 32, generator=generator), torch.randn(2, 9, 32, generator=generator)
    x_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    y_mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    x_add, y_add = mf.modeling_florence_vqa.additive_mask(x_mask, x.dtype), mf.modeling_florence_vqa.additive_mask(
        y_mask, y.dtype)
    with torch.no_grad():
        ours = layer(x, y, x_add, y_add)[0]
        theirs = bridge(x, y, attention_mask=x_add, encoder_attention_mask=y_add)[0]
        reference = paper_reference(layer, x, y, x_mask, y_mask, heads=4)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Fusion model
# ----------------------------------------------------------------------------------------------------------------------
def test_padding_is_ignored_in_both_streams():
    """Padded text and padded image tokens (masked) give the same fused states as the unpadded streams."""
    model = build(mf.FlorenceFusionModel)
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(1, 5, 32, generator=generator)
    image = torch.randn(1, 7, 32, generator=generator)
    padded_text = torch.cat([text, torch.randn(1, 3, 32, generator=generator)], 1)
    padded_image = torch.cat([image, torch.randn(1, 4, 32, generator=generator)], 1)
    text_mask = torch.tensor([[1] * 5 + [0] * 3])
    image_mask = torch.tensor([[1] * 7 + [0] * 4])
    with torch.no_grad():
        plain = model.fusion(text, image)
        padded = model.fusion(padded_text, padded_image, text_mask, image_mask)
    torch.testing.assert_close(padded[0].last_hidden_state[:, :5], plain[0].last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded[1].last_hidden_state[:, :7], plain[1].last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded[0].pooler_output, plain[0].pooler_output, atol=1e-5, rtol=1e-4)


def test_text_padding_does_not_change_the_answer_scores():
    model = build()
    inputs = {**text_inputs(3), **pixel_inputs(3)}
    row = 2
    length = int(inputs["attention_mask"][row].sum())
    with torch.no_grad():
        batched = model(**inputs).logits[row]
        alone = model(input_ids=inputs["input_ids"][row : row + 1, :length],
                      pixel_values=inputs["pixel_values"][row : row + 1]).logits[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)


def test_image_cls_is_the_average_token_and_image_mask_averages_kept_tokens():
    model = build(mf.FlorenceFusionModel, **METER_STREAM)
    inputs = {**text_inputs(2), **pixel_inputs(2)}

    def embed(tokens):
        return model.fusion.embed_image(model.fusion.image_transform(tokens))

    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
        tokens = output.vision_model_output.last_hidden_state
        fusion_input = output.image_fusion_output.hidden_states[0]
        torch.testing.assert_close(fusion_input[:, 0], embed(tokens.mean(1)), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fusion_input[:, 1:], embed(tokens), atol=1e-5, rtol=1e-4)
        assert output.pooler_output.shape == (2, 64)
        torch.testing.assert_close(output.pooler_output[:, :32], output.text_fusion_output.pooler_output)
        # An all-ones image mask changes nothing; masking tokens moves the average token to the kept ones' mean.
        ones = torch.ones(tokens.shape[:2], dtype=torch.long)
        torch.testing.assert_close(model(**inputs, image_attention_mask=ones).pooler_output, output.pooler_output)
        half = ones.clone()
        half[:, tokens.shape[1] // 2 :] = 0
        masked = model(**inputs, image_attention_mask=half, output_hidden_states=True)
        expected = embed(tokens[:, : tokens.shape[1] // 2].mean(1))
        torch.testing.assert_close(masked.image_fusion_output.hidden_states[0][:, 0], expected, atol=1e-5, rtol=1e-4)
        with pytest.raises(ValueError, match="image_attention_mask"):
            model(**inputs, image_attention_mask=ones[:, :-1])


def test_earlier_stages_and_position_embeddings_enter_the_image_stream():
    """`vision_feature_stages=[2, 3]`: stage-2 tokens (LayerNorm + Linear) then the last stage's (`image_transform`),
    each plus the 2D sine-cosine embedding of its grid; their average in front, the image token type on all."""
    model = build(mf.FlorenceFusionModel, vision_feature_stages=[2, 3], image_position_embeddings=True)
    assert list(model.fusion.image_stage_transforms) == ["stage2"]
    inputs = {**text_inputs(2), **pixel_inputs(2)}
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
        vision = model.vision_model(pixel_values=inputs["pixel_values"])
        stage2, last = vision.feature_maps[1], vision.feature_maps[2]
        projection = model.fusion.image_stage_transforms["stage2"]
        norm = projection.layer_norm
        normed = F.layer_norm(stage2.flatten(2).transpose(1, 2), (stage2.shape[1],), norm.weight, norm.bias, norm.eps)
        fine = F.linear(normed, projection.dense.weight, projection.dense.bias)
        coarse = model.fusion.image_transform(vision.last_hidden_state)
        positions = torch.cat([sincos_position_embeddings(*stage2.shape[-2:], 32),
                               sincos_position_embeddings(*last.shape[-2:], 32)])
        tokens = torch.cat([fine, coarse], 1) + positions
        expected = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + model.fusion.token_type_embeddings.weight[1]
        fusion_input = output.image_fusion_output.hidden_states[0]
        assert fusion_input.shape == (2, 1 + stage2.shape[-2] * stage2.shape[-1] + last.shape[-2] * last.shape[-1], 32)
        torch.testing.assert_close(fusion_input, expected, atol=1e-5, rtol=1e-4)
        # Moving the image moves the answer: positions matter (the same tokens without them fuse differently).
        plain = build(mf.FlorenceFusionModel, vision_feature_stages=[2, 3], image_position_embeddings=False)
        assert not torch.allclose(plain(**inputs).pooler_output, output.pooler_output)


def test_sincos_position_embeddings_place_each_token_on_the_unit_square():
    table = sincos_position_embeddings(2, 3, 16, dtype=torch.float64)
    assert table.shape == (6, 16)
    frequencies = 8 * math.pi * 100.0 ** (-torch.arange(4, dtype=torch.float64) / 4)
    x, y = (2 + 0.5) / 3, (1 + 0.5) / 2  # row 1, column 2: the last token
    torch.testing.assert_close(table[5], torch.cat([(x * frequencies).sin(), (x * frequencies).cos(),
                                                    (y * frequencies).sin(), (y * frequencies).cos()]))
    assert torch.cdist(table, table).fill_diagonal_(1).min() > 0.1  # every token its own place
    # resolution-independent: the centre of a 1x1 grid and of a 3x3 grid is the same point
    torch.testing.assert_close(sincos_position_embeddings(1, 1, 16)[0], sincos_position_embeddings(3, 3, 16)[4])


def test_vqa_loss_is_bce_on_soft_scores_times_the_answers():
    model = build()
    inputs = {**text_inputs(2), **pixel_inputs(2)}
    labels = torch.tensor([[0.0, 0.3, 1.0, 0.0, 0.6], [1.0, 0.0, 0.0, 0.9, 0.0]])
    output = model(**inputs, labels=labels)
    logits = output.logits
    manual = -(labels * F.logsigmoid(logits) + (1 - labels) * F.logsigmoid(-logits)).mean() * 5
    torch.testing.assert_close(output.loss, manual)
    torch.testing.assert_close(vqa_loss(logits, labels), manual)
    with pytest.raises(ValueError, match="num_labels=5"):
        model(**inputs, labels=labels[:, :4])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: i.pop("pixel_values"), "needs its image"),
        (lambda i: i.pop("input_ids"), "needs its question"),
        (lambda i: i.update(pixel_values=i["pixel_values"][:1]), "1 images but 2 questions"),
        (lambda i: i.update(attention_mask=i["attention_mask"][:, :3]), "attention_mask shape"),
    ],
)
def test_bad_model_inputs_raise_clear_errors(change, message):
    model = build()
    inputs = {**text_inputs(2), **pixel_inputs(2)}
    change(inputs)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


@pytest.mark.parametrize("stream", ["multi-stage", "meter"])
@pytest.mark.parametrize("cls", [mf.FlorenceForVQA, mf.FlorenceFusionModel])
def test_precomputed_image_features_give_the_same_outputs(cls, stream):
    """`image_hidden_states` (a frozen tower's features, computed once) stands in for `pixel_values` exactly."""
    model = build(cls, **(METER_STREAM if stream == "meter" else {}))
    inputs = {**text_inputs(2), **pixel_inputs(2)}
    with torch.no_grad():
        expected = model(**inputs).pooler_output
        pixel_values = inputs.pop("pixel_values")
        features = model.get_image_hidden_states(pixel_values)
        if stream == "meter":
            torch.testing.assert_close(features, model.vision_model(pixel_values=pixel_values).last_hidden_state)
            half = features.half()
        else:
            assert [f.shape[-1] for f in features] == model.config.vision_config.stage_dims[1:]
            assert all(f.ndim == 4 for f in features)  # maps: the (non-square) grid the positions need
            half = tuple(f.half() for f in features)
        actual = model(**inputs, image_hidden_states=half).pooler_output
        torch.testing.assert_close(actual, expected, atol=5e-3, rtol=5e-3)  # fp16 features
        torch.testing.assert_close(model(**inputs, image_hidden_states=features).pooler_output, expected)
    last = features if stream == "meter" else features[-1]
    width = model.config.vision_config.hidden_size
    with pytest.raises(ValueError, match="not both"):
        model(**inputs, pixel_values=pixel_values, image_hidden_states=features)
    with pytest.raises(ValueError, match=f"\\(batch, tokens, {width}\\)"):
        model(**inputs, image_hidden_states=last[..., :-1])
    with pytest.raises(ValueError, match="1 images but 2 questions"):
        model(**inputs, image_hidden_states=features[:1] if stream == "meter" else tuple(f[:1] for f in features))
    if stream != "meter":
        with pytest.raises(ValueError, match="stages \\[2, 3\\]"):  # the last stage alone is not enough here
            model(**inputs, image_hidden_states=last)
        with pytest.raises(ValueError, match="non-square"):
            model(**inputs, image_hidden_states=tuple(f.flatten(1, 2) for f in features))


def test_from_florence_copies_both_towers_exactly(tmp_path):
    torch.manual_seed(0)
    florence = mf.FlorenceModel(tiny_florence_config()).eval()
    florence.save_pretrained(tmp_path / "florence")
    for source in (florence, tmp_path / "florence"):
        vqa = mf.FlorenceForVQA.from_florence(source, hidden_size=32, num_fusion_layers=1, num_attention_heads=4,
                                              id2label={0: "yes", 1: "no"})
        assert vqa.config.num_labels == 2 and vqa.config.text_config.causal_attention is False
        assert vqa.text_model.encoder.layers[0].self_attn.is_causal is False
        for name, tower in (("vision_model", florence.vision_model), ("text_model", florence.text_model)):
            ours = getattr(vqa, name).state_dict()
            for key, value in tower.state_dict().items():
                assert torch.equal(ours[key], value), f"{name}.{key}"
    inputs = pixel_inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(vqa.vision_model(**inputs).pooler_output,
                                   florence.vision_model(**inputs).pooler_output)
    with pytest.raises(ValueError, match="two-tower"):
        mf.FlorenceForVQA.from_florence(florence.vision_model)


def test_models_load_each_others_fusion_weights(tmp_path):
    """Fusion pretraining -> VQA: the VQA model takes the towers and fusion layers of a pretraining folder."""
    pretraining = build(mf.FlorenceForVisionLanguagePretraining, seed=3)
    pretraining.save_pretrained(tmp_path)
    vqa = mf.FlorenceForVQA.from_pretrained(tmp_path)
    expected = pretraining.state_dict()
    for key, value in vqa.state_dict().items():
        if not key.startswith("vqa_head."):
            assert torch.equal(value, expected[key]), key


# ----------------------------------------------------------------------------------------------------------------------
# Fusion pretraining: ITM with hard negatives, MLM
# ----------------------------------------------------------------------------------------------------------------------
def test_negatives_are_never_positives_and_hard_ones_follow_the_similarity():
    torch.manual_seed(0)
    similarity = torch.tensor([[1.0, 0.9, -1.0, -1.0], [0.9, 1.0, -1.0, -1.0], [0.0, 0.0, 1.0, 0.0], [0.2, 0.2, 0.2, 1.0]])
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 3] = positives[3, 0] = True  # identical texts count as positives
    draws = torch.stack([sample_negatives(similarity, positives, hard=True)[0] for _ in range(300)])
    assert not positives[torch.arange(4).expand_as(draws), draws].any()
    # Row 0 is far more similar to text 1 than to text 2: hard sampling picks 1 almost always, uniform about half.
    assert (draws[:, 0] == 1).float().mean() > 0.95
    uniform = torch.stack([sample_negatives(similarity, positives, hard=False)[0] for _ in range(300)])
    assert 0.3 < (uniform[:, 0] == 1).float().mean() < 0.7
    _, valid = sample_negatives(similarity[:1, :1], torch.ones(1, 1, dtype=torch.bool), hard=True)
    assert not valid.any()


def test_itm_pairs_positives_with_sampled_negatives(monkeypatch):
    model = build(mf.FlorenceForVisionLanguagePretraining).train()
    inputs = {**text_inputs(4), **pixel_inputs(4)}
    seen = {}
    original = model.fusion.forward

    def spy(text_embeds, image_embeds, *args, **kwargs):
        seen.setdefault("batches", []).append(text_embeds.shape[0])
        return original(text_embeds, image_embeds, *args, **kwargs)

    monkeypatch.setattr(model.fusion, "forward", spy)
    output = model(**inputs, return_loss=True)
    assert seen["batches"] == [4, 12]  # the given pairs, then 4 positives + 4 + 4 negatives
    assert output.loss is not None and output.mlm_loss is None and torch.equal(output.loss, output.itm_loss)
    output.loss.backward()
    assert model.itm_head.weight.grad.abs().sum() > 0


def test_mlm_loss_reads_masked_positions_and_itm_sees_the_unmasked_text():
    model = build(mf.FlorenceForVisionLanguagePretraining, mask_token_id=400).train()
    inputs = {**text_inputs(3), **pixel_inputs(3)}
    generator = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(inputs["input_ids"], inputs["attention_mask"], 400, 49408,
                                 special_ids=(49406, 49407), probability=0.5, generator=generator)
    assert (labels != -100).any()
    assert torch.equal(torch.where(labels != -100, labels, masked), inputs["input_ids"])
    assert not ((labels != -100) & (inputs["attention_mask"] == 0)).any()
    assert not ((labels == 49406) | (labels == 49407)).any()
    output = model(input_ids=masked, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"],
                   mlm_labels=labels, itm_labels=torch.tensor([1, 0, 1]))
    expected_mlm = F.cross_entropy(output.mlm_logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(output.mlm_loss, expected_mlm)
    with torch.no_grad():  # ITM on the given pairs, read from the unmasked texts
        clean = model(**inputs)
    expected_itm = F.cross_entropy(clean.itm_logits, torch.tensor([1, 0, 1]))
    torch.testing.assert_close(output.itm_loss, expected_itm, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(output.loss, output.itm_loss + output.mlm_loss)
    with pytest.raises(ValueError, match="mask_token_id is required"):
        mask_tokens(masked, None, None, 49408)


def test_exported_vqa_folder_answers_without_the_package(processor, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "conversion"))
    from export_for_hub import main as export_main

    model = build(num_labels=5, id2label=dict(enumerate(processor.answer_vocabulary)))
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    assert export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub")]) == 0
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForVisualQuestionAnswering"] == "modeling_florence_vqa.FlorenceForVQA"
    result = subprocess.run([sys.executable, "-c", REMOTE_VQA, str(tmp_path / "hub")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.split("RESULT", 1)[1])
    assert remote["model"] == "FlorenceForVQA" and remote["processor"] == "FlorenceVQAProcessor"
    inputs = processor(text=["is there a red circle?", "how many shapes?"], images=images(2))
    with torch.no_grad():
        local = processor.post_process_vqa(model(**inputs), top_k=2)
    assert [[a["answer"] for a in row] for row in remote["answers"]] == [[a["answer"] for a in row] for row in local]
    for remote_row, local_row in zip(remote["answers"], local):
        for r, l in zip(remote_row, local_row):
            assert math.isclose(r["score"], l["score"], rel_tol=1e-4, abs_tol=1e-5)


def test_from_florence2_folder_davit_tokens_equal_transformers_and_train_one_step(florence2_folder, two_tower_folder):
    """VQA on the DaViT of a Transformers `florence2` folder: the tower is copied exactly, its image tokens are
    Transformers' `Florence2VisionBackbone` hidden states of `vision_feature_stages`, flattened; the text tower comes
    from `text_source`; one training step moves the DaViT."""
    theirs, folder = florence2_folder
    fields = dict(hidden_size=32, num_fusion_layers=1, num_attention_heads=4, intermediate_size=48,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, id2label={0: "yes", 1: "no", 2: "red"},
                  vision_feature_stages=[1, 2], image_position_embeddings=True)
    vqa = mf.FlorenceForVQA.from_florence(folder, text_source=two_tower_folder, **fields).eval()
    assert vqa.config.vision_tower == "davit" and vqa.config.vision_config.out_features == ["stage1", "stage2"]
    assert type(vqa.vision_model) is mf.FlorenceDaViTBackbone and vqa.fusion.image_layer_norm is not None
    florence = mf.FlorenceModel.from_pretrained(two_tower_folder)
    for key, value in florence.text_model.state_dict().items():
        assert torch.equal(vqa.text_model.state_dict()[key], value), key
    pixels = torch.randn(2, 3, 40, 32)
    expected = [state.flatten(2).transpose(1, 2) for state in davit_stage_states(theirs, pixels)]
    tokens = vqa.get_image_hidden_states(pixels)  # channels-last maps (position embeddings need the grids)
    for actual, reference in zip(tokens, expected, strict=True):
        torch.testing.assert_close(actual.flatten(1, 2), reference, atol=1e-5, rtol=0)
    inputs = {**text_inputs(2), "pixel_values": pixels}
    with torch.no_grad():
        torch.testing.assert_close(vqa(**inputs).logits, vqa(**text_inputs(2), image_hidden_states=tokens).logits)
    labels = torch.tensor([[1.0, 0.0, 0.3], [0.0, 0.6, 0.0]])
    assert_one_training_step(vqa, lambda model: model(**inputs, labels=labels).loss)
    # without a text source the text tower is built from `text_config` (its init); a model instance works too
    bare = mf.FlorenceForVQA.from_florence(theirs, text_config=florence.config.text_config.to_dict(), **fields)
    tower = bare.vision_model.vision_tower.state_dict()
    assert all(torch.equal(tower[k], v) for k, v in theirs.model.vision_tower.state_dict().items())
