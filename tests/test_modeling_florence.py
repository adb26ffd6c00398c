"""Tests of `modeling_florence/modeling_florence.py`."""

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModel, AutoConfig, AutoModelForZeroShotImageClassification
from transformers.modeling_outputs import BaseModelOutputWithPooling

import modeling_florence as mf
from modeling_florence import FlorenceModel, FlorenceTextModel, FlorenceVisionModel, FlorenceConfig, unicl_loss
from tests.test_common import tiny_florence_config, pixel_inputs, text_inputs

from florence_testing import same_weights, tiny_window7_vision_config


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return mf.FlorenceModel(tiny_florence_config()).eval()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _score_alone(rank: int, world_size: int, port: int, folder: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        if rank == 0:  # rank 1 waits at the barrier: a collective inside forward would pair with it and fail or hang
            model = FlorenceModel.from_pretrained(folder).eval()
            with torch.no_grad():
                out = model(**text_inputs(5), **pixel_inputs(3))
            queue.put(tuple(out.logits_per_image.shape))
        dist.barrier()
    finally:
        dist.destroy_process_group()


EOS = 49407


def tiny_config(**vision_overrides) -> FlorenceConfig:
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return FlorenceConfig(
        vision_config=tiny_window7_vision_config(**vision_overrides).to_dict(), text_config=text, projection_dim=24
    )


def text_batch(batch=4, length=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 49000, (batch, length), generator=generator)
    input_ids[:, 0] = 49406
    attention_mask = torch.ones_like(input_ids)
    for row in range(batch):
        end = length - 1 - (row % 3)
        input_ids[row, end] = EOS
        input_ids[row, end + 1 :] = 0
        attention_mask[row, end + 1 :] = 0
    return input_ids, attention_mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FlorenceModel(tiny_config()).eval()


@pytest.mark.parametrize("bad", [-1, 10_000])
def test_position_ids_outside_the_table_are_refused(tiny_model, bad):
    table = tiny_model.config.text_config.max_position_embeddings
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"position_ids must lie in \[0, {table}\)"):
        tiny_model.get_text_features(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, bad]]))
    tiny_model.get_text_features(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, table - 1]]))  # the last one is fine


def test_towers_load_from_a_two_tower_folder(florence, two_tower_folder):
    vision = FlorenceVisionModel.from_pretrained(two_tower_folder)
    text = FlorenceTextModel.from_pretrained(two_tower_folder)
    assert same_weights(vision, florence.vision_model) and same_weights(text, florence.text_model)
    assert vision.config.embed_dim == florence.config.vision_config.embed_dim
    # AutoModel on the folder is the two-tower model itself.
    assert isinstance(AutoModel.from_pretrained(two_tower_folder), FlorenceModel)


def test_feature_getters_follow_transformers_5(florence):
    text, pixels = text_inputs(2), pixel_inputs(2)
    with torch.no_grad():
        out = florence(**text, **pixels)
        text_out = florence.get_text_features(**text, output_hidden_states=True, output_attentions=True)
        image_out = florence.get_image_features(**pixels, output_hidden_states=True)
        as_tuple = florence.get_image_features(**pixels, return_dict=False)
    assert isinstance(text_out, BaseModelOutputWithPooling) and isinstance(image_out, BaseModelOutputWithPooling)
    torch.testing.assert_close(torch.nn.functional.normalize(text_out.pooler_output, dim=-1), out.text_embeds)
    torch.testing.assert_close(torch.nn.functional.normalize(image_out.pooler_output, dim=-1), out.image_embeds)
    assert len(text_out.hidden_states) == 3 and len(text_out.attentions) == 2
    assert len(image_out.hidden_states) == 4
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[1], image_out.pooler_output)


def test_inference_logits_are_the_calls_own(florence):
    with torch.no_grad():
        out = florence(**text_inputs(5), **pixel_inputs(3))
    assert out.logits_per_image.shape == (3, 5) and out.logits_per_text.shape == (5, 3)


def test_a_rank_scoring_alone_under_torch_distributed_does_not_hang(two_tower_folder):
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    processes = [
        context.Process(target=_score_alone, args=(rank, 2, port, str(two_tower_folder), queue)) for rank in range(2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, "inference under torch.distributed hung"
    assert queue.get(timeout=5) == (3, 5)


def test_bad_model_inputs_raise_clear_errors(florence):
    text, pixels = text_inputs(2), pixel_inputs(2)
    out_of_vocab = text["input_ids"].clone()
    out_of_vocab[0, 1] = 49408
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 49407\]"):
        florence.text_model(input_ids=out_of_vocab)
    negative = text["input_ids"].clone()
    negative[1, 2] = -1
    with pytest.raises(ValueError, match="outside the vocabulary"):
        florence(input_ids=negative, pixel_values=pixels["pixel_values"])
    with pytest.raises(ValueError, match="empty"):
        florence.text_model(input_ids=torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="empty batch"):
        florence.vision_model(pixel_values=torch.zeros(0, 3, 32, 32))
    mask = text["attention_mask"].clone()
    mask[1] = 0
    with pytest.raises(ValueError, match=r"all zeros for text\(s\) \[1\]"):
        florence.text_model(input_ids=text["input_ids"], attention_mask=mask)
    with pytest.raises(ValueError, match="floating-point"):
        florence.vision_model(pixel_values=torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_padding_mask_is_honoured_without_changing_the_pooled_feature(florence):
    """The pooled feature of a padded row equals that of the same text unpadded (pooling at the first EOS)."""
    text = text_inputs(3)
    with torch.no_grad():
        batched = florence.text_model(**text).pooler_output
        for row in range(3):
            length = int(text["attention_mask"][row].sum())
            alone = florence.text_model(input_ids=text["input_ids"][row : row + 1, :length]).pooler_output
            torch.testing.assert_close(batched[row : row + 1], alone, atol=1e-5, rtol=1e-4)


def test_attention_weights_from_an_sdpa_model_are_the_eager_ones(two_tower_folder):
    """Fused kernels return no weights: a call asking for them runs the eager path, with the same outputs."""
    inputs = {**text_inputs(2), **pixel_inputs(2)}
    outputs = {}
    for implementation in ("sdpa", "eager"):
        model = FlorenceModel.from_pretrained(two_tower_folder, attn_implementation=implementation).eval()
        with torch.no_grad():
            outputs[implementation] = model(**inputs, output_attentions=True)
    for tower in ("vision_model_output", "text_model_output"):
        sdpa, eager = outputs["sdpa"][tower].attentions, outputs["eager"][tower].attentions
        assert len(sdpa) == len(eager) and all(a is not None for a in sdpa)
        for a, b in zip(sdpa, eager):
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(outputs["sdpa"].logits_per_image, outputs["eager"].logits_per_image)


# --- text tower ---------------------------------------------------------------------------------------------------
def test_text_pooling_at_first_eos_and_causality(model):
    input_ids, attention_mask = text_batch()
    text = model.text_model
    with torch.no_grad():
        pooled = text(input_ids, attention_mask).pooler_output
        changed_after = input_ids.clone()
        changed_after[:, -1] = EOS  # a second EOS / padding change after the first EOS
        assert torch.allclose(text(changed_after, attention_mask).pooler_output, pooled, atol=1e-6)
        changed_before = input_ids.clone()
        changed_before[:, 1] = 42
        assert not torch.allclose(text(changed_before, attention_mask).pooler_output, pooled, atol=1e-4)
        eos_position = (input_ids[0] == EOS).nonzero()[0, 0]
        hidden = text(input_ids, attention_mask).last_hidden_state
        torch.testing.assert_close(pooled[0], hidden[0, eos_position])


def test_text_longer_than_positions_is_a_clear_error(model):
    with pytest.raises(ValueError, match="78 tokens but the text model has 77 positions"):
        model.text_model(torch.ones(1, 78, dtype=torch.long))


# --- two-tower model and loss -------------------------------------------------------------------------------------
def test_forward_outputs_follow_clip(model):
    input_ids, attention_mask = text_batch()
    pixel_values = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, return_loss=True)
    assert set(out.keys()) >= {"loss", "logits_per_image", "logits_per_text", "image_embeds", "text_embeds"}
    assert out.logits_per_image.shape == (4, 4)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(4))
    image_features = model.get_image_features(pixel_values).pooler_output
    torch.testing.assert_close(torch.nn.functional.normalize(image_features, dim=-1), out.image_embeds)
    text_features = model.get_text_features(input_ids, attention_mask).pooler_output
    torch.testing.assert_close(torch.nn.functional.normalize(text_features, dim=-1), out.text_embeds)
    expected = model.temperature() * out.image_embeds @ out.text_embeds.t()
    torch.testing.assert_close(out.logits_per_image, expected)
    as_tuple = model(input_ids=input_ids, pixel_values=pixel_values, return_dict=False)
    assert isinstance(as_tuple, tuple)


def test_logit_scale_is_clamped_at_100(model):
    with torch.no_grad():
        saved = model.logit_scale.clone()
        model.logit_scale.fill_(10.0)
        assert model.temperature().item() == pytest.approx(100.0)
        model.logit_scale.copy_(saved)


def test_model_loss_uses_labels_and_is_permutation_invariant(model):
    input_ids, attention_mask = text_batch()
    pixel_values = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([5, 9, 5, 2])
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, labels=labels)
        assert out.loss.item() == pytest.approx(unicl_loss(out.logits_per_image, labels).item(), rel=1e-6)
        clip = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, return_loss=True)
        assert clip.loss.item() == pytest.approx(unicl_loss(clip.logits_per_image, torch.arange(4)).item(), rel=1e-6)
        order = torch.tensor([2, 0, 3, 1])
        permuted = model(
            input_ids=input_ids[order], pixel_values=pixel_values[order],
            attention_mask=attention_mask[order], labels=labels[order],
        )
    assert permuted.loss.item() == pytest.approx(out.loss.item(), rel=1e-5)


# --- bad input ----------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(model):
    input_ids, attention_mask = text_batch()
    with pytest.raises(ValueError, match="has 1 channels but the model expects 3"):
        model(input_ids=input_ids, pixel_values=torch.randn(4, 1, 64, 64))
    with pytest.raises(ValueError, match="smaller than one attention window.*at least 28x28"):
        model(input_ids=input_ids, pixel_values=torch.randn(4, 3, 20, 64))
    with pytest.raises(ValueError, match="3 images and 4 texts"):
        model(input_ids=input_ids, pixel_values=torch.randn(3, 3, 64, 64), return_loss=True)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        model(input_ids=input_ids, pixel_values=torch.randn(4, 3, 64, 64), labels=torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="needs both input_ids and pixel_values"):
        model(pixel_values=torch.randn(4, 3, 64, 64))


# --- Transformers integration -------------------------------------------------------------------------------------
def test_save_load_roundtrip_safetensors_and_auto_classes(model, tmp_path):
    model.save_pretrained(tmp_path / "florence")
    files = {p.name for p in (tmp_path / "florence").iterdir()}
    assert "model.safetensors" in files and not any(name.endswith(".bin") for name in files)
    input_ids, attention_mask = text_batch()
    pixel_values = torch.randn(4, 3, 64, 64)
    for loader in (FlorenceModel, AutoModel, AutoModelForZeroShotImageClassification):
        reloaded = loader.from_pretrained(tmp_path / "florence").eval()
        assert isinstance(reloaded, FlorenceModel)
        with torch.no_grad():
            expected = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
            actual = reloaded(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        torch.testing.assert_close(actual.logits_per_image, expected.logits_per_image, atol=0, rtol=0)
    model.vision_model.save_pretrained(tmp_path / "vision")
    model.text_model.save_pretrained(tmp_path / "text")
    assert isinstance(AutoModel.from_pretrained(tmp_path / "vision"), FlorenceVisionModel)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "text"), FlorenceTextModel)
    assert AutoConfig.from_pretrained(tmp_path / "florence").model_type == "florence"
