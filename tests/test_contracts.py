"""Contracts the adapters rely on: loading towers and backbones from any Florence folder, inference without
collectives, Transformers 5 feature outputs, and clear errors on bad model inputs."""

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoBackbone, AutoModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_florence import FlorenceModel, FlorenceTextModel, FlorenceVisionBackbone, FlorenceVisionModel
from tests.test_common import pixel_inputs, text_inputs, tiny_florence_config, tiny_vision_config


@pytest.fixture(scope="module")
def florence():
    torch.manual_seed(0)
    return FlorenceModel(tiny_florence_config()).eval()


@pytest.fixture(scope="module")
def two_tower_folder(florence, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-tower")
    florence.save_pretrained(folder)
    return folder


def same_weights(module_a, module_b) -> bool:
    a, b = module_a.state_dict(), module_b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_towers_load_from_a_two_tower_folder(florence, two_tower_folder):
    vision = FlorenceVisionModel.from_pretrained(two_tower_folder)
    text = FlorenceTextModel.from_pretrained(two_tower_folder)
    assert same_weights(vision, florence.vision_model) and same_weights(text, florence.text_model)
    assert vision.config.embed_dim == florence.config.vision_config.embed_dim
    # AutoModel on the folder is the two-tower model itself.
    assert isinstance(AutoModel.from_pretrained(two_tower_folder), FlorenceModel)


@pytest.mark.parametrize("source", ["coswin", "two-tower", "backbone"])
def test_auto_backbone_loads_the_encoder_from_every_folder(florence, two_tower_folder, tmp_path, source):
    folder = two_tower_folder
    if source == "coswin":
        folder = tmp_path / "coswin"
        FlorenceVisionModel.from_pretrained(two_tower_folder).save_pretrained(folder)
    elif source == "backbone":
        folder = tmp_path / "backbone"
        FlorenceVisionBackbone.from_pretrained(two_tower_folder, config=None).save_pretrained(folder)
    backbone = AutoBackbone.from_pretrained(str(folder), out_features=["stage2", "stage3"])
    assert isinstance(backbone, FlorenceVisionBackbone)
    assert backbone.out_features == ["stage2", "stage3"]
    assert same_weights(backbone.vision_model, florence.vision_model)
    maps = backbone(**pixel_inputs(1, size=(64, 64))).feature_maps
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 8, 8), (64, 4, 4)]


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


def test_fp32_pixels_are_cast_to_the_model_dtype(florence):
    model = FlorenceVisionModel(tiny_vision_config()).eval().to(torch.bfloat16)
    with torch.no_grad():
        out = model(**pixel_inputs(1))
    assert out.pooler_output.dtype == torch.bfloat16


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
