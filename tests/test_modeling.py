"""FlorenceModel and its towers: shapes, Transformers integration, loss, and clear errors on bad input."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForZeroShotImageClassification,
)
from transformers.models.clip.modeling_clip import image_text_contrastive_loss as clip_loss

import modeling_florence as mf
from modeling_florence import (
    FlorenceConfig,
    FlorenceModel,
    FlorenceTextConfig,
    FlorenceTextModel,
    FlorenceVisionBackbone,
    FlorenceVisionConfig,
    FlorenceVisionModel,
    unicl_loss,
)
from modeling_florence.modeling_coswin import FlorenceVisionLayer

REPO = Path(__file__).resolve().parent.parent
EOS = 49407


def tiny_vision_config(**overrides) -> FlorenceVisionConfig:
    config = dict(embed_dim=16, depths=[1, 2, 1], num_heads=[1, 2, 4], window_size=7, drop_path_rate=0.0)
    config.update(overrides)
    return FlorenceVisionConfig(**config)


def tiny_config(**vision_overrides) -> FlorenceConfig:
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return FlorenceConfig(
        vision_config=tiny_vision_config(**vision_overrides).to_dict(), text_config=text, projection_dim=24
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


# --- configs and presets ------------------------------------------------------------------------------------------
def test_every_preset_loads_and_unknown_preset_is_named():
    names = mf.available_presets()
    for expected in ("coswin-t", "coswin-s", "coswin-b", "coswin-l", "coswin-h", "florence-tiny", "florence-base"):
        assert expected in names
    assert isinstance(mf.load_preset("coswin-b"), FlorenceVisionConfig)
    assert mf.load_preset("coswin-b").embed_dim == 128
    base = mf.load_preset("florence-base")
    assert base.text_config.hidden_size == 512 and base.text_config.num_hidden_layers == 12
    with pytest.raises(ValueError, match="Unknown preset 'coswin-x'.*coswin-t"):
        mf.load_preset("coswin-x")


def test_preset_sub_config_overrides_merge_into_the_preset():
    tiny = mf.load_preset("florence-tiny")
    smaller = mf.load_preset("florence-tiny", vision_config={"image_size": 32}, projection_dim=64)
    assert smaller.vision_config.image_size == 32 and smaller.projection_dim == 64
    assert smaller.vision_config.depths == tiny.vision_config.depths
    assert smaller.vision_config.embed_dim == tiny.vision_config.embed_dim
    assert smaller.text_config.to_dict() == tiny.text_config.to_dict()


def test_florence_huge_matches_the_paper_sizes():
    """CoSwin-H 637M and a 256M text tower (Florence Sec. 2.3), each within 5%, counted without allocating."""
    with torch.device("meta"):
        huge = FlorenceModel(mf.load_preset("florence-huge"))
    vision = sum(p.numel() for p in huge.vision_model.parameters())
    text = sum(p.numel() for p in huge.text_model.parameters())
    assert abs(vision / 637e6 - 1) < 0.05, vision
    assert abs(text / 256e6 - 1) < 0.05, text


def test_presets_ship_as_package_data(tmp_path):
    """A normal (non-editable) install carries `configuration/` as `modeling_florence/presets`."""
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=REPO, check=True, capture_output=True,
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import modeling_florence as m; "
        "assert m.__file__.startswith(sys.argv[1]), m.__file__; "
        "print(m.presets_dir(), m.load_preset('coswin-t').embed_dim)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert str(tmp_path) in result.stdout and result.stdout.strip().endswith("96")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_heads=[3, 0, 12, 24]), "num_heads"),
        (dict(depths=[2, 2], num_heads=[3, 6, 12]), "depths and num_heads"),
        (dict(patch_embed="overlap"), "patch_embed"),
        (dict(downsample="pool"), "downsample"),
    ],
)
def test_invalid_vision_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FlorenceVisionConfig(**kwargs)


def test_head_widths_are_checked_when_the_model_is_built():
    config = FlorenceVisionConfig(embed_dim=37)  # serialisable, as Swin's configs (Transformers' ConfigTester uses 37)
    assert FlorenceVisionConfig.from_dict(config.to_dict()).embed_dim == 37
    with pytest.raises(ValueError, match=r"num_heads\[0\]=3 does not divide the stage width 37"):
        FlorenceVisionModel(config)


def test_invalid_text_config_names_the_field():
    with pytest.raises(ValueError, match="num_attention_heads"):
        FlorenceTextConfig(hidden_size=100, num_attention_heads=3)


# --- CoSwin -------------------------------------------------------------------------------------------------------
def test_coswin_uses_cvt_convolutional_embeddings():
    vision = FlorenceVisionModel(tiny_vision_config())
    stem = vision.embeddings.projection
    assert (stem.kernel_size, stem.stride, stem.padding) == ((7, 7), (4, 4), (2, 2))
    merge = vision.stages[1].downsample.projection
    assert (merge.kernel_size, merge.stride, merge.padding) == ((3, 3), (2, 2), (1, 1))
    swin = FlorenceVisionModel(tiny_vision_config(patch_embed="linear", downsample="merge"))
    assert swin.embeddings.projection.kernel_size == (4, 4)
    assert swin.stages[1].downsample.reduction.in_features == 4 * 16


@pytest.mark.parametrize("mode", ["conv", "linear"])
def test_one_instance_runs_at_any_resolution(mode):
    vision = FlorenceVisionModel(
        tiny_vision_config(patch_embed=mode, downsample="conv" if mode == "conv" else "merge")
    ).eval()
    for height, width in [(224, 224), (384, 384), (800, 1333)]:
        with torch.no_grad():
            output = vision(torch.randn(1, 3, height, width), output_hidden_states=True)
        maps = output.feature_maps
        assert [m.shape[1] for m in maps] == [16, 32, 64]
        for stage, feature_map in enumerate(maps):  # strides 4, 8, 16 up to rounding
            assert abs(feature_map.shape[2] - height / 4 / 2**stage) <= 1
            assert abs(feature_map.shape[3] - width / 4 / 2**stage) <= 1
        assert output.last_hidden_state.shape == (1, maps[-1].shape[2] * maps[-1].shape[3], 64)
        torch.testing.assert_close(output.pooler_output, output.last_hidden_state.mean(1))
        assert len(output.hidden_states) == 4


def test_small_windows_read_the_exact_sub_table():
    """A 4x4 map under a 7x7 window config equals a 4x4-window block whose bias table is the centre crop."""
    torch.manual_seed(0)
    large = FlorenceVisionLayer(tiny_vision_config(window_size=7), 16, 2, shifted=True, drop_path_rate=0.0).eval()
    small = FlorenceVisionLayer(tiny_vision_config(window_size=4), 16, 2, shifted=True, drop_path_rate=0.0).eval()
    torch.nn.init.normal_(large.attn.relative_position_bias_table)
    state = large.state_dict()
    table = state["attn.relative_position_bias_table"].view(13, 13, 2)
    state["attn.relative_position_bias_table"] = table[3:10, 3:10].reshape(49, 2)
    small.load_state_dict(state)
    hidden = torch.randn(2, 4, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(large(hidden)[0], small(hidden)[0])
    assert large.window_and_shift(4, 4) == ((4, 4), (0, 0))
    assert large.window_and_shift(4, 20) == ((4, 7), (0, 3))


def test_backbone_through_auto_backbone():
    config = tiny_vision_config(out_features=["stage1", "stage2", "stage3"])
    backbone = AutoBackbone.from_config(config)
    assert isinstance(backbone, FlorenceVisionBackbone)
    assert backbone.channels == [16, 32, 64]
    with torch.no_grad():
        maps = backbone(torch.randn(2, 3, 96, 128)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 16, 24, 32), (2, 32, 12, 16), (2, 64, 6, 8)]


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


def test_unicl_with_distinct_labels_is_clip_loss_as_a_sum():
    logits = torch.randn(6, 6) * 5
    assert unicl_loss(logits, torch.arange(6)).item() == pytest.approx(2 * clip_loss(logits.t()).item(), rel=1e-6)


def test_unicl_loss_follows_florence_equations():
    """Eq. 2-3 written out term by term: positives share a label, each weighted 1/|P(i)|."""
    torch.manual_seed(0)
    logits = torch.randn(5, 5) * 3
    labels = torch.tensor([7, 3, 7, 1, 3])
    log_i2t = logits.log_softmax(dim=1)
    log_t2i = logits.t().log_softmax(dim=1)
    expected_i2t = expected_t2i = 0.0
    for i in range(5):
        positives = [k for k in range(5) if labels[k] == labels[i]]
        expected_i2t -= sum(log_i2t[i, k] for k in positives) / len(positives)
        expected_t2i -= sum(log_t2i[i, k] for k in positives) / len(positives)
    expected = (expected_i2t + expected_t2i) / 5
    assert unicl_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert unicl_loss(logits, labels).item() != pytest.approx(unicl_loss(logits, torch.arange(5)).item(), rel=1e-3)


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


def test_sdpa_and_eager_attention_agree(model, tmp_path):
    model.save_pretrained(tmp_path)
    eager = FlorenceModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = FlorenceModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.vision_model.config._attn_implementation == "eager"
    assert sdpa.text_model.config._attn_implementation == "sdpa"
    input_ids, attention_mask = text_batch()
    pixel_values = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        a = eager(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        b = sdpa(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    torch.testing.assert_close(a.image_embeds, b.image_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.text_embeds, b.text_embeds, atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    reference = FlorenceModel(tiny_config()).train()
    checkpointed = FlorenceModel(tiny_config()).train()
    checkpointed.load_state_dict(reference.state_dict())
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.vision_model.stages[0].blocks[0].gradient_checkpointing
    assert checkpointed.text_model.encoder.layers[0].gradient_checkpointing
    input_ids, attention_mask = text_batch()
    pixel_values = torch.randn(4, 3, 64, 64)
    for net in (reference, checkpointed):
        net(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, return_loss=True).loss.backward()
    for (name, p), q in zip(reference.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bfloat16_loading_and_meta_device_init(model, tmp_path):
    model.save_pretrained(tmp_path)
    bf16 = FlorenceModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    input_ids, attention_mask = text_batch()
    pixel_values = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        out = bf16(input_ids=input_ids, pixel_values=pixel_values.bfloat16(), attention_mask=attention_mask)
        ref = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    assert out.image_embeds.dtype == torch.bfloat16
    torch.testing.assert_close(out.image_embeds.float(), ref.image_embeds, atol=0.05, rtol=0)
    with torch.device("meta"):
        on_meta = FlorenceModel(tiny_config())
    assert all(p.is_meta for p in on_meta.parameters())
