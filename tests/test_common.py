"""The common model suite: the contracts Transformers' own common tests check, run for every model class the package
exports.

Every `PreTrainedModel` subclass the package exports (public names of `modeling_florence`) must have a tester in `TESTERS` (a test fails when
one is missing), so each adapter joins the suite the day it lands. `VARIANTS` adds testers of a class on another
construction (`"FlorenceForObjectDetection[davit]"`: the detector on Florence-2's DaViT), run through every contract.
A tester gives a tiny config, a batch of inputs, the output fields that are per-sample, and how many hidden states /
attention maps the model returns.

Transformers contracts that do not apply here, and why:
- resizing token embeddings / tied input-output embeddings: no model here has a language-model head to tie;
- `inputs_embeds`: neither tower takes embeddings instead of ids/pixels (CLIP's towers do not either);
- head masking and pruning: removed from Transformers 5;
- flash-attention / flex-attention equivalence: CPU-only CI; the towers declare `_supports_flash_attn = False`
  (window attention adds a relative-position bias that flash kernels cannot take), sdpa and eager are both tested.
"""

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

import modeling_florence as mf

EOS = 49407


# ----------------------------------------------------------------------------------------------------------------------
# Testers
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    make_config: Callable[[], object]
    make_inputs: Callable[[int], dict]  # batch size -> model inputs (float inputs fp32)
    per_sample: tuple[str, ...]  # output fields whose dim 0 is the batch
    num_hidden_states: dict[str, int] = field(default_factory=dict)  # output path -> expected count
    num_attentions: dict[str, int] = field(default_factory=dict)
    loss_inputs: dict = field(default_factory=dict)  # extra inputs that make the output carry a loss
    lora_targets: tuple[str, ...] = ("qkv", "q_proj", "v_proj")
    # False where the sub-models read only their own folders: the generation model's are Transformers' own
    # (`Florence2VisionBackbone`, `BartModel`), and its CoSwin sits at `vision_tower` as Transformers' layout has it.
    sub_models_load_from_folder: bool = True


def tiny_vision_config(**overrides):
    config = dict(
        embed_dim=16, depths=[1, 2, 1], num_heads=[1, 2, 4], window_size=4, drop_path_rate=0.0, image_size=32
    )
    config.update(overrides)
    return mf.FlorenceVisionConfig(**config)


def tiny_text_config(**overrides):
    config = dict(
        vocab_size=49408, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16,
    )
    config.update(overrides)
    return mf.FlorenceTextConfig(**config)


def tiny_florence_config():
    return mf.FlorenceConfig(
        vision_config=tiny_vision_config().to_dict(), text_config=tiny_text_config().to_dict(), projection_dim=24
    )


def pixel_inputs(batch: int, size=(48, 40)) -> dict:
    generator = torch.Generator().manual_seed(batch)
    return {"pixel_values": torch.randn(batch, 3, *size, generator=generator)}


def text_inputs(batch: int, length: int = 9) -> dict:
    """Ids with start/end tokens and right padding of different lengths per row."""
    generator = torch.Generator().manual_seed(100 + batch)
    input_ids = torch.randint(1, 49000, (batch, length), generator=generator)
    input_ids[:, 0] = 49406
    attention_mask = torch.ones_like(input_ids)
    for row in range(batch):
        end = length - 1 - (row % 3)
        input_ids[row, end] = EOS
        input_ids[row, end + 1 :] = EOS  # the pad token is <|endoftext|>
        attention_mask[row, end + 1 :] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def tiny_video_vision_config(**overrides):
    config = dict(embed_dim=16, depths=[1, 2], num_heads=[1, 2], patch_size=(2, 4, 4), window_size=(2, 3, 3),
                  drop_path_rate=0.0, num_frames=4)
    config.update(overrides)
    return mf.FlorenceVideoVisionConfig(**config)


def tiny_video_config():
    return mf.FlorenceVideoConfig(
        vision_config=tiny_video_vision_config().to_dict(), text_config=tiny_text_config().to_dict(), projection_dim=24
    )


def video_inputs(batch: int, frames: int = 4, size=(24, 20)) -> dict:
    generator = torch.Generator().manual_seed(200 + batch)
    return {"pixel_values": torch.randn(batch, frames, 3, *size, generator=generator)}


def tiny_video_classification_config():
    config = tiny_video_config()
    config.num_labels, config.id2label = 3, {0: "left", 1: "right", 2: "still"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    return config


VIDEO_STATES = 1 + len(tiny_video_vision_config().depths)
VIDEO_ATTENTIONS = sum(tiny_video_vision_config().depths)


def tiny_vqa_config(**overrides):
    """METER fusion on the tiny towers: 2 co-attention layers per stream, 5 answers, no dropout; the image stream
    reads stages 2 and 3 with 2D position embeddings (as the florence-vqa-tiny preset; `vision_feature_stages=None,
    image_position_embeddings=False` is METER's last-stage-only stream)."""
    config = dict(
        vision_config=tiny_vision_config().to_dict(), text_config=tiny_text_config().to_dict(), hidden_size=32,
        num_fusion_layers=2, num_attention_heads=4, intermediate_size=48, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=5, vision_feature_stages=[2, 3], image_position_embeddings=True,
    )
    config.update(overrides)
    return mf.FlorenceVQAConfig(**config)


def pair_inputs(batch: int) -> dict:
    return {**text_inputs(batch), **pixel_inputs(batch)}


VISION_STATES = 1 + len(tiny_vision_config().depths)
VISION_ATTENTIONS = sum(tiny_vision_config().depths)
TEXT_STATES = 1 + tiny_text_config().num_hidden_layers
TEXT_ATTENTIONS = tiny_text_config().num_hidden_layers

TESTERS: dict[str, ModelSpec] = {
    "FlorenceVisionModel": ModelSpec(
        tiny_vision_config,
        pixel_inputs,
        per_sample=("last_hidden_state", "pooler_output", "feature_maps"),
        num_hidden_states={"": VISION_STATES},
        num_attentions={"": VISION_ATTENTIONS},
    ),
    "FlorenceVisionBackbone": ModelSpec(
        lambda: tiny_vision_config(out_features=["stem", "stage2", "stage3"]),
        pixel_inputs,
        per_sample=("feature_maps",),
        num_hidden_states={"": VISION_STATES},
        num_attentions={"": VISION_ATTENTIONS},
    ),
    "FlorenceTextModel": ModelSpec(
        tiny_text_config,
        text_inputs,
        per_sample=("last_hidden_state", "pooler_output"),
        num_hidden_states={"": TEXT_STATES},
        num_attentions={"": TEXT_ATTENTIONS},
    ),
    "FlorenceModel": ModelSpec(
        tiny_florence_config,
        lambda batch: {**text_inputs(batch), **pixel_inputs(batch)},
        per_sample=("image_embeds", "text_embeds"),
        num_hidden_states={"vision_model_output": VISION_STATES, "text_model_output": TEXT_STATES},
        num_attentions={"vision_model_output": VISION_ATTENTIONS, "text_model_output": TEXT_ATTENTIONS},
        loss_inputs={"return_loss": True},
    ),
    "FlorenceVideoVisionModel": ModelSpec(
        tiny_video_vision_config,
        video_inputs,
        per_sample=("last_hidden_state", "pooler_output", "feature_maps"),
        num_hidden_states={"": VIDEO_STATES},
        num_attentions={"": VIDEO_ATTENTIONS},
    ),
    "FlorenceVideoModel": ModelSpec(
        tiny_video_config,
        lambda batch: {**text_inputs(batch), **video_inputs(batch)},
        per_sample=("video_embeds", "text_embeds"),
        num_hidden_states={"vision_model_output": VIDEO_STATES, "text_model_output": TEXT_STATES},
        num_attentions={"vision_model_output": VIDEO_ATTENTIONS, "text_model_output": TEXT_ATTENTIONS},
        loss_inputs={"return_loss": True},
    ),
    "FlorenceForVideoClassification": ModelSpec(
        tiny_video_classification_config,
        video_inputs,
        per_sample=("logits",),
        num_hidden_states={"": VIDEO_STATES},
        num_attentions={"": VIDEO_ATTENTIONS},
        loss_inputs={"labels": torch.tensor([0, 2])},
    ),
    "FlorenceForImageClassification": ModelSpec(
        lambda: tiny_vision_config(num_labels=5),
        pixel_inputs,
        per_sample=("logits",),
        num_hidden_states={"": VISION_STATES},
        num_attentions={"": VISION_ATTENTIONS},
        loss_inputs={"labels": torch.tensor([1, 3])},
    ),
}

# The METER adapter: towers as in FlorenceModel, plus the two fusion streams (fusion input + one state per layer; the
# `attentions` of a stream are its self-attention maps, its cross-attention maps are in `cross_attentions`).
FUSION_STATES = {
    "vision_model_output": VISION_STATES,
    "text_model_output": TEXT_STATES,
    "text_fusion_output": 1 + tiny_vqa_config().num_fusion_layers,
    "image_fusion_output": 1 + tiny_vqa_config().num_fusion_layers,
}
FUSION_ATTENTIONS = {
    "vision_model_output": VISION_ATTENTIONS,
    "text_model_output": TEXT_ATTENTIONS,
    "text_fusion_output": tiny_vqa_config().num_fusion_layers,
    "image_fusion_output": tiny_vqa_config().num_fusion_layers,
}
TESTERS.update({
    "FlorenceFusionModel": ModelSpec(
        tiny_vqa_config, pair_inputs, per_sample=("pooler_output",),
        num_hidden_states=FUSION_STATES, num_attentions=FUSION_ATTENTIONS,
    ),
    "FlorenceForVQA": ModelSpec(
        tiny_vqa_config, pair_inputs, per_sample=("logits", "pooler_output"),
        num_hidden_states=FUSION_STATES, num_attentions=FUSION_ATTENTIONS,
        loss_inputs={"labels": torch.tensor([[0.0, 0.3, 1.0, 0.0, 0.6], [1.0, 0.0, 0.0, 0.9, 0.0]])},
    ),
    # The loss samples ITM negatives with the global RNG: equal seeds give equal samples, so gradients compare.
    "FlorenceForVisionLanguagePretraining": ModelSpec(
        tiny_vqa_config, pair_inputs, per_sample=("itm_logits", "mlm_logits", "pooler_output"),
        num_hidden_states=FUSION_STATES, num_attentions=FUSION_ATTENTIONS,
        # ITM on sampled negatives and MLM on two masked positions, so every head takes part in the loss.
        loss_inputs={"return_loss": True, "mlm_labels": torch.full((2, 9), -100).index_fill_(1, torch.tensor([2, 4]), 320)},
    ),
})


def tiny_detection_config(**overrides):
    """A 4-stage tiny CoSwin (stages 2-4 feed the FPN), 16-channel FPN, 2 DyHead blocks, 3 classes."""
    config = dict(
        vision_config=tiny_vision_config(depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4]).to_dict(),
        fpn_channels=16, num_dyhead_blocks=2, dyhead_norm_groups=4, num_labels=3,
    )
    config.update(overrides)
    return mf.FlorenceDetectionConfig(**config)


def detection_labels(batch: int) -> list[dict]:
    """DETR-format targets (normalised cx, cy, w, h); the last image has no object (pure background)."""
    labels = [{"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.7, 0.2, 0.2]])}
              for _ in range(batch - 1)]
    return labels + [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]


TESTERS["FlorenceForObjectDetection"] = ModelSpec(
    tiny_detection_config,
    pixel_inputs,
    per_sample=("logits", "pred_boxes", "centerness"),
    num_hidden_states={"": 5},
    num_attentions={"": 4},
    loss_inputs={"labels": detection_labels(2)},
)


# Florence-2 generation: the DaViT tower (Transformers' Florence2VisionBackbone) on the conditional-generation class,
# the CoSwin tower with two stages of tokens on the base model; a 2+2-layer BART (no cache in a forward: the
# contracts compare tensors, `generate` turns the cache on itself).
GENERATION_TEXT = dict(
    model_type="bart", d_model=32, vocab_size=120, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64, bos_token_id=0,
    eos_token_id=2, pad_token_id=1, decoder_start_token_id=2, dropout=0.0, attention_dropout=0.0, use_cache=False,
)
GENERATION_DAVIT = dict(
    depths=[1, 2], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True],
    embed_dim=[16, 32], num_heads=[2, 4], num_groups=[2, 4], window_size=2, projection_dim=32, drop_path_rate=0.0,
)


def tiny_generation_config(tower: str = "davit"):
    if tower == "davit":
        return mf.FlorenceGenerationConfig(vision_config=GENERATION_DAVIT, text_config=GENERATION_TEXT,
                                           image_token_id=119)
    vision = tiny_vision_config(window_size=2).to_dict()
    return mf.FlorenceGenerationConfig(vision_tower="coswin", vision_config=vision, text_config=GENERATION_TEXT,
                                       image_token_id=119, vision_feature_stages=[2, 3])


def generation_inputs(batch: int, image_tokens: int) -> dict:
    """32x32 images, their `<image>` placeholders, a prompt and 4 decoder tokens."""
    generator = torch.Generator().manual_seed(300 + batch)
    prompt = torch.randint(3, 100, (batch, 5), generator=generator)
    decoder = torch.randint(3, 100, (batch, 4), generator=generator)
    decoder[:, 0] = 2
    return {"input_ids": torch.cat([torch.full((batch, image_tokens), 119), prompt], dim=1),
            "pixel_values": torch.randn(batch, 3, 32, 32, generator=generator), "decoder_input_ids": decoder}


TESTERS["FlorenceForConditionalGeneration"] = ModelSpec(
    tiny_generation_config, lambda batch: generation_inputs(batch, 1 + 4 * 4), per_sample=("logits",),
    loss_inputs={"labels": torch.tensor([[5, 6, 7, 2], [8, 2, -100, -100]])}, sub_models_load_from_folder=False,
)
TESTERS["FlorenceDaViTBackbone"] = ModelSpec(
    lambda: mf.FlorenceDaViTConfig(**GENERATION_DAVIT, out_features=["stem", "stage1", "stage2"]),
    pixel_inputs, per_sample=("feature_maps",), num_hidden_states={"": 1 + len(GENERATION_DAVIT["depths"])},
    sub_models_load_from_folder=False,
)
TESTERS["FlorenceGenerationModel"] = ModelSpec(
    lambda: tiny_generation_config("coswin"), lambda batch: generation_inputs(batch, 1 + 4 * 4 + 2 * 2),
    per_sample=("last_hidden_state", "encoder_last_hidden_state"), sub_models_load_from_folder=False,
)


# Variants: an exported class on another image tower (chosen by its config), under its own tester name. The DaViT is
# the common generation tester's (2 stages, strides 4 and 8): the detector's FPN reads both stages.
DAVIT_STATES = 1 + len(GENERATION_DAVIT["depths"])  # stem + one per stage
VARIANTS: dict[str, type] = {
    "FlorenceForObjectDetection[davit]": mf.FlorenceForObjectDetection,
    "FlorenceForVQA[davit]": mf.FlorenceForVQA,
}


def tiny_davit_detection_config(**overrides):
    return tiny_detection_config(vision_config=mf.FlorenceDaViTConfig(**GENERATION_DAVIT).to_dict(),
                                 out_features=["stage1", "stage2"], **overrides)


def tiny_davit_vqa_config(**overrides):
    return tiny_vqa_config(vision_config=mf.FlorenceDaViTConfig(**GENERATION_DAVIT).to_dict(),
                           vision_feature_stages=[1, 2], **overrides)


TESTERS["FlorenceForObjectDetection[davit]"] = ModelSpec(
    tiny_davit_detection_config, pixel_inputs, per_sample=("logits", "pred_boxes", "centerness"),
    num_hidden_states={"": DAVIT_STATES}, loss_inputs={"labels": detection_labels(2)},
)
TESTERS["FlorenceForVQA[davit]"] = ModelSpec(
    tiny_davit_vqa_config, pair_inputs, per_sample=("logits", "pooler_output"),
    num_hidden_states={**FUSION_STATES, "vision_model_output": DAVIT_STATES},
    num_attentions={key: count for key, count in FUSION_ATTENTIONS.items() if key != "vision_model_output"},
    loss_inputs=TESTERS["FlorenceForVQA"].loss_inputs,
)


def exported_model_classes() -> list[type]:
    return sorted(
        (
            obj
            for name, obj in vars(mf).items()
            if not name.startswith("_") and isinstance(obj, type) and issubclass(obj, PreTrainedModel)
            and obj.__module__.startswith("modeling_florence.") and not name.endswith("PreTrainedModel")
        ),
        key=lambda cls: cls.__name__,
    )


def test_every_exported_model_class_has_a_tester():
    names = {cls.__name__ for cls in exported_model_classes()}
    assert {"FlorenceModel", "FlorenceVisionModel", "FlorenceTextModel", "FlorenceVisionBackbone"} <= names
    missing = names - set(TESTERS)
    assert not missing, f"model classes without a common-suite tester: {sorted(missing)}"


MODEL_CLASSES = [pytest.param(cls, id=cls.__name__) for cls in exported_model_classes()]
# (class, tester name): every exported class under its own name, then the variants.
MODEL_CASES = [pytest.param(cls, cls.__name__, id=cls.__name__) for cls in exported_model_classes()] + [
    pytest.param(cls, name, id=name) for name, cls in VARIANTS.items()
]


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------
def build(cls, seed: int = 0, spec: str | None = None, **config_overrides):
    """`cls` on the tiny config of tester `spec` (default: the class's own tester)."""
    torch.manual_seed(seed)
    config = TESTERS[spec or cls.__name__].make_config()
    for key, value in config_overrides.items():
        setattr(config, key, value)
    return cls(config).eval()


def tensors(value) -> list[torch.Tensor]:
    """Every tensor of an output (ModelOutput, tuple or tensor), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, ModelOutput):
        value = value.to_tuple()
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors(item)]
    return []


def assert_outputs_close(actual, expected, atol=1e-5, rtol=1e-4):
    actual, expected = tensors(actual), tensors(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol)


def nested(output, path: str):
    return getattr(output, path) if path else output


def first_float(output) -> torch.Tensor:
    return next(t for t in tensors(output) if t.is_floating_point())


def scalar_loss(output) -> torch.Tensor:
    loss = getattr(output, "loss", None)
    if loss is not None:
        return loss
    return sum(t.float().pow(2).mean() for t in tensors(output) if t.is_floating_point() and t.requires_grad)


def save(model, directory) -> Path:
    model.save_pretrained(directory)
    return Path(directory)


# ----------------------------------------------------------------------------------------------------------------------
# Contracts
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_save_load_round_trip(cls, spec, tmp_path):
    model = build(cls, spec=spec)
    inputs = TESTERS[spec].make_inputs(2)
    folder = save(model, tmp_path)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    reloaded = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        assert_outputs_close(reloaded(**inputs), model(**inputs), atol=0, rtol=0)


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_each_sub_model_loads_from_the_composite_folder(cls, spec, tmp_path):
    """As `CLIPVisionModel.from_pretrained(clip_folder)`: every sub-model class reads its own weights from the folder
    of the model that holds it, and gives that sub-model's outputs."""
    model = build(cls, spec=spec)
    folder = save(model, tmp_path)
    children = [(name, child) for name, child in model.named_children() if isinstance(child, PreTrainedModel)]
    if not TESTERS[spec].sub_models_load_from_folder:
        pytest.skip(f"{cls.__name__}'s sub-models read only their own folders")
    if not children:
        pytest.skip(f"{cls.__name__} holds no sub-model")
    for name, child in children:
        loaded = type(child).from_pretrained(folder).eval()
        expected = child.state_dict()
        assert set(loaded.state_dict()) == set(expected), name
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, expected[key]), f"{name}.{key} was not loaded from the composite folder"


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_every_missing_weight_is_initialised(cls, spec, tmp_path):
    """Weights absent from a checkpoint come from `_init_weights` (finite, and distributed like a fresh model's),
    never from uninitialised memory."""
    model = build(cls, spec=spec)
    folder = save(model, tmp_path)
    state = load_file(folder / "model.safetensors")
    kept = {key: value for index, (key, value) in enumerate(sorted(state.items())) if index % 3 == 0}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
    torch.manual_seed(1)
    loaded = cls.from_pretrained(folder)
    fresh = dict(build(cls, seed=2, spec=spec).named_parameters())
    for name, param in loaded.named_parameters():
        assert torch.isfinite(param).all(), f"{name} holds non-finite values"
        if name in kept:
            assert torch.equal(param, kept[name]), name
            continue
        reference = fresh[name].detach()
        if reference.numel() >= 64 and reference.std() > 0:
            ratio = (param.std() / reference.std()).item()
            assert 0.7 < ratio < 1.4, f"{name}: std {param.std():.4g} vs a fresh model's {reference.std():.4g}"
        else:
            torch.testing.assert_close(param.detach().mean(), reference.mean(), atol=0.05, rtol=0.1)


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_batched_equals_one_by_one(cls, spec):
    model = build(cls, spec=spec)
    tester = TESTERS[spec]
    inputs = tester.make_inputs(3)
    with torch.no_grad():
        batched = model(**inputs)
        singles = [model(**{k: v[i : i + 1] for k, v in inputs.items()}) for i in range(3)]
    for key in tester.per_sample:
        for b, s in zip(tensors(batched[key]), zip(*(tensors(single[key]) for single in singles))):
            torch.testing.assert_close(b, torch.cat(s), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_hidden_states_and_attentions_shapes_and_gradients(cls, spec):
    tester = TESTERS[spec]
    config = tester.make_config()
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(config).eval()
    inputs = tester.make_inputs(2)
    output = model(**inputs, output_hidden_states=True, output_attentions=True)
    retained = []
    for path, count in tester.num_hidden_states.items():
        states = nested(output, path).hidden_states
        assert len(states) == count, f"{path or cls.__name__}: {len(states)} hidden states, expected {count}"
        assert all(s.shape[0] == 2 and s.ndim == 3 for s in states)
        states[0].retain_grad()
        retained.append(states[0])
    for path, count in tester.num_attentions.items():
        attentions = nested(output, path).attentions
        assert len(attentions) == count, f"{path or cls.__name__}: {len(attentions)} attention maps, expected {count}"
        assert all(a.ndim == 4 and a.shape[-1] == a.shape[-2] for a in attentions)
        torch.testing.assert_close(attentions[0].sum(-1), torch.ones_like(attentions[0].sum(-1)))
        attentions[0].retain_grad()
        retained.append(attentions[0])
    scalar_loss(output).backward()
    for tensor in retained:
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, "no gradient reached a returned tensor"


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_config_output_hidden_states_is_honoured(cls, spec):
    tester = TESTERS[spec]
    model = build(cls, spec=spec, output_hidden_states=True)
    with torch.no_grad():
        output = model(**tester.make_inputs(1))
    for path, count in tester.num_hidden_states.items():
        assert len(nested(output, path).hidden_states) == count


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_sdpa_equals_eager(cls, spec, tmp_path):
    folder = save(build(cls, spec=spec), tmp_path)
    inputs = TESTERS[spec].make_inputs(2)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model = cls.from_pretrained(folder, attn_implementation=implementation).eval()
        with torch.no_grad():
            outputs[implementation] = model(**inputs)
    assert_outputs_close(outputs["sdpa"], outputs["eager"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_set_attn_implementation_switches_every_attention_layer(cls, spec):
    """`model.set_attn_implementation(...)` on a built model (as with CLIP): every (sub-)config follows, and the
    kernels it selects give the outputs of a model loaded with that implementation."""
    model = build(cls, spec=spec)
    inputs = TESTERS[spec].make_inputs(2)
    with torch.no_grad():
        reference = model(**inputs)
        model.set_attn_implementation("eager")
        configs = [module.config for module in model.modules() if isinstance(module, PreTrainedModel)]
        assert {config._attn_implementation for config in configs} == {"eager"}
        assert_outputs_close(model(**inputs), reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_gradient_checkpointing_gives_the_same_gradients(cls, spec):
    tester = TESTERS[spec]
    inputs = {**tester.make_inputs(2), **tester.loss_inputs}
    gradients = []
    for checkpointing in (False, True):
        model = build(cls, spec=spec).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        scalar_loss(model(**inputs)).backward()
        gradients.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_bf16_loading_casts_fp32_inputs(cls, spec, tmp_path):
    model = build(cls, spec=spec)
    folder = save(model, tmp_path)
    inputs = TESTERS[spec].make_inputs(2)
    half = cls.from_pretrained(folder, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    with torch.no_grad():
        reference, output = first_float(model(**inputs)), first_float(half(**inputs))
    assert output.dtype == torch.bfloat16
    similarity = torch.nn.functional.cosine_similarity(output.float().flatten(), reference.flatten(), dim=0)
    assert similarity > 0.99


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_meta_device_init(cls, spec):
    config = TESTERS[spec].make_config()
    with torch.device("meta"):
        model = cls(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_return_dict_false_gives_the_same_tuple(cls, spec):
    model = build(cls, spec=spec)
    inputs = TESTERS[spec].make_inputs(2)
    with torch.no_grad():
        as_dict, as_tuple = model(**inputs), model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and not isinstance(as_tuple, ModelOutput)
    assert_outputs_close(as_tuple, as_dict.to_tuple(), atol=0, rtol=0)


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_torch_export(cls, spec):
    model = build(cls, spec=spec)
    inputs = TESTERS[spec].make_inputs(2)
    exported = torch.export.export(model, args=(), kwargs=inputs, strict=False)
    with torch.no_grad():
        assert_outputs_close(exported.module()(**inputs), model(**inputs), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_lora_trains_only_the_adapters_and_merges_exactly(cls, spec, tmp_path):
    peft = pytest.importorskip("peft")
    tester = TESTERS[spec]
    model = build(cls, spec=spec)
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    targets = [target for target in tester.lora_targets if target in names]
    assert targets, f"{cls.__name__} has none of the LoRA target layers {tester.lora_targets}"
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    lora = peft.get_peft_model(copy.deepcopy(model), config)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    inputs = {**tester.make_inputs(2), **tester.loss_inputs}
    scalar_loss(lora(**inputs)).backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if p.requires_grad)
    lora.eval()
    plain_inputs = tester.make_inputs(2)
    with torch.no_grad():
        adapted = lora(**plain_inputs)
        assert not all(torch.equal(a, b) for a, b in zip(tensors(adapted), tensors(model(**plain_inputs))))
        lora.save_pretrained(tmp_path / "adapter")
        reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "adapter").eval()
        assert_outputs_close(reloaded(**plain_inputs), adapted, atol=1e-6, rtol=1e-5)
        merged = lora.merge_and_unload()
        assert_outputs_close(merged(**plain_inputs), adapted, atol=1e-5, rtol=1e-4)
