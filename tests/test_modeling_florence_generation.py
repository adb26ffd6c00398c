"""FlorenceForConditionalGeneration: parity with Transformers' Florence2ForConditionalGeneration (DaViT tower, both
directions of loading), the CoSwin tower from Florence folders, multi-stage tokens, Auto classes and bad input."""

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    Florence2Config,
    Florence2ForConditionalGeneration,
)

import modeling_florence as mf
from modeling_florence import FlorenceForConditionalGeneration, FlorenceGenerationConfig, FlorenceGenerationModel
from modeling_florence.modeling_florence_generation import standardize

VOCAB, IMAGE_ID = 120, 119
TEXT = dict(
    model_type="bart", d_model=32, vocab_size=VOCAB, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64, bos_token_id=0,
    eos_token_id=2, pad_token_id=1, decoder_start_token_id=2, dropout=0.0, attention_dropout=0.0,
)
DAVIT = dict(
    depths=[1, 2], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True],
    embed_dim=[16, 32], num_heads=[2, 4], num_groups=[2, 4], window_size=2, projection_dim=32, drop_path_rate=0.0,
)
COSWIN = dict(embed_dim=16, depths=[1, 1, 1], num_heads=[1, 2, 4], window_size=2, drop_path_rate=0.0, image_size=32)


def davit_config(**overrides) -> FlorenceGenerationConfig:
    return FlorenceGenerationConfig(vision_config=DAVIT, text_config=TEXT, image_token_id=IMAGE_ID, **overrides)


def coswin_config(**overrides) -> FlorenceGenerationConfig:
    return FlorenceGenerationConfig(vision_tower="coswin", vision_config=COSWIN, text_config=TEXT,
                                    image_token_id=IMAGE_ID, **overrides)


def inputs(model, batch=2, size=32, seed=0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 100, (batch, 6), generator=generator)
    prompt[:, 0], prompt[:, -1] = 0, 2
    images = torch.full((batch, model.num_image_tokens(size, size)), IMAGE_ID)
    return {"input_ids": torch.cat([images, prompt], dim=1),
            "pixel_values": torch.randn(batch, 3, size, size, generator=generator)}


@pytest.fixture(scope="module")
def transformers_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(
        Florence2Config(vision_config=DAVIT, text_config=TEXT, image_token_id=IMAGE_ID)
    ).eval()
    folder = tmp_path_factory.mktemp("florence2")
    model.save_pretrained(folder)
    return model, folder


def test_transformers_folder_loads_with_equal_logits_and_generation(transformers_folder):
    theirs, folder = transformers_folder
    ours = FlorenceForConditionalGeneration.from_pretrained(folder).eval()
    assert ours.config.vision_tower == "davit" and ours.config.model_type == "florence_generation"
    assert set(ours.state_dict()) == set(theirs.state_dict())
    batch = inputs(ours)
    decoder = torch.tensor([[2, 0, 7, 9], [2, 0, 11, 4]])
    with torch.no_grad():
        expected = theirs(**batch, decoder_input_ids=decoder).logits
        actual = ours(**batch, decoder_input_ids=decoder).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    for beams in (1, 3):
        kwargs = dict(max_new_tokens=10, num_beams=beams, do_sample=False)
        assert torch.equal(ours.generate(**batch, **kwargs), theirs.generate(**batch, **kwargs)), f"{beams} beams"


def test_our_davit_folder_loads_back_into_transformers(tmp_path):
    torch.manual_seed(1)
    ours = FlorenceForConditionalGeneration(davit_config()).eval()
    ours.save_pretrained(tmp_path)
    theirs = Florence2ForConditionalGeneration.from_pretrained(tmp_path).eval()
    batch = inputs(ours, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(theirs(**batch).logits, ours(**batch).logits, atol=1e-5, rtol=0)
    kwargs = dict(max_new_tokens=8, num_beams=3, do_sample=False)
    assert torch.equal(theirs.generate(**batch, **kwargs), ours.generate(**batch, **kwargs))


def test_auto_classes_load_both_towers(tmp_path):
    for name, config in (("davit", davit_config()), ("coswin", coswin_config())):
        model = FlorenceForConditionalGeneration(config).eval()
        model.save_pretrained(tmp_path / name)
        assert type(AutoConfig.from_pretrained(tmp_path / name)) is FlorenceGenerationConfig
        assert type(AutoModelForImageTextToText.from_pretrained(tmp_path / name)) is FlorenceForConditionalGeneration
        base = AutoModel.from_pretrained(tmp_path / name)
        assert type(base) is FlorenceGenerationModel and base.config.vision_tower == name
        assert torch.equal(base.vision_tower.state_dict()[next(iter(base.vision_tower.state_dict()))],
                           model.model.vision_tower.state_dict()[next(iter(base.vision_tower.state_dict()))])


def test_tower_is_chosen_at_construction():
    assert type(FlorenceGenerationModel(davit_config()).vision_tower).__name__ == "Florence2VisionBackbone"
    assert type(FlorenceGenerationModel(coswin_config()).vision_tower) is mf.FlorenceVisionModel
    with pytest.raises(ValueError, match="vision_tower must be one of"):
        FlorenceGenerationConfig(vision_tower="vit", text_config=TEXT, image_token_id=IMAGE_ID)
    with pytest.raises(ValueError, match="florence_coswin"):
        FlorenceGenerationConfig(vision_tower="coswin", vision_config={"model_type": "florence_vision"},
                                 text_config=TEXT, image_token_id=IMAGE_ID)
    with pytest.raises(ValueError, match="image_token_id"):
        FlorenceGenerationConfig(vision_config=DAVIT, text_config=TEXT, image_token_id=VOCAB)
    with pytest.raises(ValueError, match="projection_dim"):
        FlorenceGenerationConfig(vision_config=dict(DAVIT, projection_dim=16), text_config=TEXT,
                                 image_token_id=IMAGE_ID)


def florence_two_tower():
    torch.manual_seed(3)
    return mf.FlorenceModel(mf.FlorenceConfig(
        vision_config=COSWIN, projection_dim=24,
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=16),
    ))


def test_from_florence_copies_the_coswin_tower_from_every_kind_of_source(tmp_path):
    florence = florence_two_tower()
    florence.save_pretrained(tmp_path / "two-tower")
    florence.vision_model.save_pretrained(tmp_path / "coswin")
    backbone = mf.FlorenceVisionBackbone(mf.FlorenceVisionConfig(**COSWIN, out_features=["stage3"]))
    backbone.vision_model.load_state_dict(florence.vision_model.state_dict())
    backbone.save_pretrained(tmp_path / "backbone")
    expected = florence.vision_model.state_dict()
    for source in (florence, florence.vision_model, backbone, tmp_path / "two-tower", tmp_path / "coswin",
                   tmp_path / "backbone"):
        model = FlorenceForConditionalGeneration.from_florence(source, text_config=TEXT, image_token_id=IMAGE_ID)
        assert model.config.vision_tower == "coswin"
        for key, value in model.model.vision_tower.state_dict().items():
            assert torch.equal(value, expected[key]), (source, key)
    with pytest.raises(ValueError, match="from_florence needs"):
        FlorenceForConditionalGeneration.from_florence(torch.nn.Linear(2, 2), text_config=TEXT)


def test_coswin_tower_trains_and_generates_with_multi_stage_tokens():
    torch.manual_seed(4)
    model = FlorenceForConditionalGeneration(coswin_config(vision_feature_stages=[2, 3]))
    # 32 px: stage 2 gives 4x4 tokens, stage 3 2x2, plus the mean token
    assert model.num_image_tokens(32, 32) == 1 + 16 + 4
    batch = inputs(model)
    labels = torch.tensor([[0, 5, 6, 2, -100], [0, 8, 2, -100, -100]])
    loss = model(**batch, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.multi_modal_projector.stage_projections["stage2"].dense.weight.grad.abs().sum() > 0
    assert model.model.vision_tower.embeddings.projection.weight.grad.abs().sum() > 0
    model.eval()
    generated = model.generate(**batch, max_new_tokens=5, num_beams=3)
    assert generated.shape[0] == 2 and generated.shape[1] <= 6
    with pytest.raises(ValueError, match="vision_feature_stages must list"):
        coswin_config(vision_feature_stages=[1, 2])
    with pytest.raises(ValueError, match="CoSwin tower"):
        davit_config(vision_feature_stages=[2])


def test_training_loss_scores_labelled_positions_only_and_image_maps_are_standardised():
    torch.manual_seed(6)
    model = FlorenceForConditionalGeneration.from_florence(florence_two_tower(), text_config=TEXT,
                                                           image_token_id=IMAGE_ID, vision_feature_stages=[2, 3])
    projector = model.model.multi_modal_projector
    assert model.config.image_feature_norm and set(projector.feature_norms) == {"stage2", "stage3"}
    batch = inputs(model, batch=2)
    labels = torch.tensor([[0, 5, 6, 2, -100], [0, 8, 2, -100, -100]])
    model.eval()  # the running statistics of the standardisation, so both modes see the same image tokens
    full = model(**batch, labels=labels)
    model.train()
    for norm in projector.feature_norms.values():
        norm.eval()
    sparse = model(**batch, labels=labels)
    assert sparse.logits is None and full.logits.shape[:2] == labels.shape
    torch.testing.assert_close(sparse.loss, full.loss)
    projector.train()  # a batch of one image on a 1x1 map has no batch statistics: the running ones are used
    single = torch.randn(1, projector.feature_norms["stage3"].num_features, 1, 1)
    torch.testing.assert_close(standardize(projector.feature_norms["stage3"], single),
                               projector.feature_norms["stage3"].eval()(single))
    with pytest.raises(ValueError, match="image_feature_norm is for the CoSwin tower"):
        davit_config(image_feature_norm=True)


def test_batched_generation_with_padded_prompts_matches_single_prompts():
    torch.manual_seed(5)
    model = FlorenceForConditionalGeneration(davit_config()).eval()
    batch = inputs(model, batch=2)
    attention_mask = torch.ones_like(batch["input_ids"])
    batch["input_ids"][1, -2:] = 1  # second prompt is 2 tokens shorter: right padding
    attention_mask[1, -2:] = 0
    together = model.generate(**batch, attention_mask=attention_mask, max_new_tokens=6)
    alone = model.generate(input_ids=batch["input_ids"][1:, :-2], pixel_values=batch["pixel_values"][1:],
                           max_new_tokens=6)
    assert torch.equal(together[1, : alone.shape[1]], alone[0])


def test_bad_input_is_a_clear_error():
    model = FlorenceForConditionalGeneration(davit_config()).eval()
    batch = inputs(model)
    for pixels in (torch.zeros(2, 3, 0, 32), torch.zeros(0, 3, 32, 32)):
        with pytest.raises(ValueError, match="no pixels"):
            model(input_ids=batch["input_ids"], pixel_values=pixels)
    with pytest.raises(ValueError, match="floating point"):
        model(**dict(batch, pixel_values=batch["pixel_values"].long()))
    with pytest.raises(ValueError, match="max_new_tokens=100000 exceeds"):
        model.generate(**batch, max_new_tokens=100000)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        model.generate(**batch, max_new_tokens=0)
    with pytest.raises(ValueError, match="2-D position table"):
        FlorenceForConditionalGeneration(coswin_config(max_position_embeddings=2))(**inputs(model, size=64))


def test_model_on_the_shipped_tokenizer_generates_parses_and_serves_the_pipeline(tmp_path):
    """The path of a model trained here: CoSwin from a two-tower model, the CLIP BPE + Florence-2 tokens, the
    processor's prompts, batched generation, parsing; the saved folder serves `pipeline("image-text-to-text")`."""
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    tokenizer = mf.FlorenceGenerationTokenizer.from_defaults()
    text = dict(TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                decoder_start_token_id=tokenizer.eos_token_id)
    model = FlorenceForConditionalGeneration.from_florence(
        florence_two_tower(), text_config=text, image_token_id=tokenizer.image_token_id).eval()
    processor = mf.FlorenceGenerationProcessor.from_defaults(image_size=32,
                                                             image_seq_length=model.num_image_tokens(32, 32))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    batch = processor(images=[image, image], text=["<OD>", "<CAPTION_TO_PHRASE_GROUNDING>a red circle"])
    assert (batch["input_ids"] == tokenizer.image_token_id).sum(1).tolist() == [model.num_image_tokens(32, 32)] * 2
    generated = model.generate(**batch, max_new_tokens=6)
    parsed = processor.post_process_generation(sequence=generated[0], task="<OD>", image_size=image.size,
                                               return_dropped=True)
    assert set(parsed["<OD>"]) == {"bboxes", "labels", "dropped"}
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    served = pipeline("image-text-to-text", model=str(tmp_path))
    assert type(served.model) is FlorenceForConditionalGeneration
    (result,) = served(images=image, text="<OD>", max_new_tokens=4)
    assert result["input_text"] == "<OD>" and isinstance(result["generated_text"], str)


def test_davit_backbone_maps_equal_transformers_hidden_states(transformers_folder, tmp_path):
    """`FlorenceDaViTBackbone` from a Transformers florence2 folder, from our generation folder (through
    `AutoBackbone`) and from its own folder: per-stage maps equal to `Florence2VisionBackbone`'s hidden states."""
    from transformers import AutoBackbone

    theirs, folder = transformers_folder
    pixels = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        states = theirs.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    # Transformers records the first embedding, then every block: stem, stage 1's last block, stage 2's last block
    expected = [states[0], states[DAVIT["depths"][0]], states[-1]]
    backbone = mf.FlorenceDaViTBackbone.from_pretrained(folder, out_features=["stem", "stage1", "stage2"]).eval()
    FlorenceForConditionalGeneration.from_pretrained(folder).save_pretrained(tmp_path / "ours")
    backbone.save_pretrained(tmp_path / "backbone")
    loaded = [backbone, AutoBackbone.from_pretrained(tmp_path / "ours", out_indices=[0, 1, 2]).eval(),
              AutoBackbone.from_pretrained(tmp_path / "backbone").eval()]
    for model in loaded:
        assert type(model) is mf.FlorenceDaViTBackbone and model.channels == [16, 16, 32]
        with torch.no_grad():
            maps = model(pixels).feature_maps
        for actual, reference in zip(maps, expected, strict=True):
            torch.testing.assert_close(actual, reference, atol=1e-5, rtol=0)
    last = AutoBackbone.from_pretrained(tmp_path / "ours")
    assert last.out_features == ["stage2"]
    FlorenceForConditionalGeneration(coswin_config()).save_pretrained(tmp_path / "coswin")
    with pytest.raises(ValueError, match="not DaViT"):
        mf.FlorenceDaViTBackbone.from_pretrained(tmp_path / "coswin")
    with pytest.raises(ValueError, match="no pixels"):
        backbone(torch.zeros(1, 3, 0, 8))
