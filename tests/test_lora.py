"""LoRA on every Florence model, through both PEFT routes, with the documented defaults (`peft_florence`).

Every model class the package exports is enumerated (`exported_model_classes`, shared with the common suite), so a new
adapter without LoRA support fails here the day it lands.
"""

import copy
import math

import pytest
import torch
from peft import PeftModel, get_peft_model
from test_common import (
    MODEL_CASES,
    TESTERS,
    assert_outputs_close,
    build,
    exported_model_classes,
    scalar_loss,
    tensors,
)

import modeling_florence as mf
from modeling_florence import peft_florence
from modeling_florence.peft_florence import (
    DEFAULT_TARGET_NAMES,
    adapter_file,
    default_lora_config,
    default_modules_to_save,
    lora_layer_names,
    parameter_counts,
    transformers_peft_problem,
)

EXPECTED_DEFAULTS = {  # the README / module docstring table
    "FlorenceVisionModel": ({"qkv", "proj", "fc1", "fc2", "projection"}, set()),
    "FlorenceVisionBackbone": ({"qkv", "proj", "fc1", "fc2", "projection"}, set()),
    "FlorenceTextModel": ({"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}, set()),
    "FlorenceModel": (set(DEFAULT_TARGET_NAMES), {"visual_projection", "text_projection"}),
    "FlorenceForImageClassification": ({"qkv", "proj", "fc1", "fc2", "projection"}, {"classifier"}),
    "FlorenceVideoVisionModel": ({"qkv", "proj", "fc1", "fc2", "projection"}, set()),
    "FlorenceVideoModel": (set(DEFAULT_TARGET_NAMES), {"visual_projection", "text_projection"}),
    "FlorenceForVideoClassification": ({"qkv", "proj", "fc1", "fc2", "projection"}, {"classifier"}),
    "FlorenceFusionModel": (set(DEFAULT_TARGET_NAMES), set()),
    "FlorenceForVQA": (set(DEFAULT_TARGET_NAMES), {"vqa_head"}),
    "FlorenceForVisionLanguagePretraining": (set(DEFAULT_TARGET_NAMES), {"itm_head", "mlm_head"}),
    "FlorenceForObjectDetection": ({"qkv", "proj", "fc1", "fc2", "projection"}, {"hidden_states_norms", "fpn", "dyhead", "head"}),  # closed-set tiny detector
    # Florence-2: DaViT + BART attention and MLPs (tiny tester: DaViT tower); the CoSwin base model adds `projection`.
    "FlorenceForConditionalGeneration": (set(DEFAULT_TARGET_NAMES) - {"projection"}, set()),
    "FlorenceGenerationModel": (set(DEFAULT_TARGET_NAMES), set()),
    "FlorenceDaViTBackbone": ({"qkv", "proj", "fc1", "fc2"}, set()),
    # The variants on Florence-2's DaViT (test_common.VARIANTS): DaViT's attention and MLPs instead of CoSwin's.
    "FlorenceForObjectDetection[davit]": (
        {"qkv", "proj", "fc1", "fc2"}, {"hidden_states_norms", "fpn", "dyhead", "head"}
    ),
    "FlorenceForVQA[davit]": (set(DEFAULT_TARGET_NAMES) - {"projection"}, {"vqa_head"}),
}


def lora_model(model, r=2, **kwargs):
    """A PEFT model with non-zero B matrices (so the adapter changes the outputs), from the default config."""
    return get_peft_model(copy.deepcopy(model), default_lora_config(model, r=r, init_lora_weights=False, **kwargs))


def expected_trainable(model, config) -> int:
    """LoRA parameters for every targeted layer: r * (in + out) for a Linear, r * (in * kernel volume + out) for a
    convolution (A has the layer's kernel, B is 1x1), plus the parameters of the heads saved in full."""
    count = 0
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and leaf in config.target_modules:
            count += config.r * (module.in_features + module.out_features)
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)) and leaf in config.target_modules:
            count += config.r * (module.in_channels * math.prod(module.kernel_size) + module.out_channels)
        if any(name == saved or name.endswith("." + saved) for saved in config.modules_to_save or ()):
            count += sum(p.numel() for p in module.parameters())
    return count


def test_every_exported_model_class_has_documented_lora_defaults():
    names = {cls.__name__ for cls in exported_model_classes()}
    missing = names - set(EXPECTED_DEFAULTS)
    assert not missing, f"model classes without documented LoRA defaults: {sorted(missing)}"


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_default_config_trains_a_small_exact_set_of_parameters(cls, spec):
    model = build(cls, spec=spec)
    config = default_lora_config(model, r=2)
    targets, heads = EXPECTED_DEFAULTS[spec]
    assert set(config.target_modules) == targets
    # Containers (ModuleList/ModuleDict) and ambiguous names are listed by their children, which PEFT can wrap.
    assert {name.split(".", 1)[0] for name in config.modules_to_save or ()} == heads
    lora = get_peft_model(copy.deepcopy(model), config)
    trainable, total = parameter_counts(lora)
    print(f"{cls.__name__}: {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%)")
    assert trainable == expected_trainable(model, config)
    names = [name for name, p in lora.named_parameters() if p.requires_grad]
    saved = config.modules_to_save or ()
    assert all("lora_" in name or any(f"{head}.modules_to_save" in name for head in saved) for name in names)
    # every targeted layer was wrapped (none silently skipped)
    wrapped = {name for name, module in lora.named_modules() if hasattr(module, "lora_A")}
    targeted = {name for name, module in model.named_modules()
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d))
                and name.rsplit(".", 1)[-1] in targets}
    assert {name.split("base_model.model.", 1)[-1] for name in wrapped} == targeted


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_adapter_saves_small_reloads_identically_and_merges(cls, spec, tmp_path):
    tester = TESTERS[spec]
    model = build(cls, spec=spec)
    model.save_pretrained(tmp_path / "base")
    lora = lora_model(model).eval()
    inputs = tester.make_inputs(2)
    with torch.no_grad():
        adapted = lora(**inputs)
        assert not all(torch.equal(a, b) for a, b in zip(tensors(adapted), tensors(model(**inputs))))
        lora.save_pretrained(tmp_path / "adapter")
        size, full = adapter_file(tmp_path / "adapter").stat().st_size, (tmp_path / "base/model.safetensors").stat().st_size
        trainable, _ = parameter_counts(lora)
        print(f"{cls.__name__}: adapter {size:,} bytes, full model {full:,} bytes")
        assert size < 4 * trainable + 64 * 1024 and size < full  # the trainable tensors and a header, nothing else
        reloaded = PeftModel.from_pretrained(cls.from_pretrained(tmp_path / "base").eval(), tmp_path / "adapter")
        assert_outputs_close(reloaded(**inputs), adapted, atol=0, rtol=0)
        merged = lora.merge_and_unload()
        assert type(merged) is cls and not any("lora_" in name for name, _ in merged.named_parameters())
        assert_outputs_close(merged(**inputs), adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_transformers_add_adapter_and_load_adapter(cls, spec, tmp_path):
    """Transformers' own PEFT integration: `add_adapter`, adapter-only `save_pretrained`, `load_adapter`. Where the
    installed Transformers asks for a newer PEFT (5.24: peft >= 0.22), the clear error is what is checked."""
    tester = TESTERS[spec]
    model = build(cls, spec=spec)
    if transformers_peft_problem() is not None:
        with pytest.raises(ValueError, match=r"need peft>=[\d.]+, but peft [\d.]+ is installed.*get_peft_model"):
            peft_florence.add_adapter(model, default_lora_config(model, r=2))
        pytest.skip(transformers_peft_problem())
    model.save_pretrained(tmp_path / "base")
    inputs = tester.make_inputs(2)
    with torch.no_grad():
        plain = model(**inputs)
    model.add_adapter(default_lora_config(model, r=2, init_lora_weights=False), adapter_name="shapes")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    with torch.no_grad():
        adapted = model(**inputs)
    assert not all(torch.equal(a, b) for a, b in zip(tensors(adapted), tensors(plain)))
    model.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # only the adapter is written
    fresh = cls.from_pretrained(tmp_path / "base").eval()
    fresh.load_adapter(tmp_path / "adapter", adapter_name="shapes")
    with torch.no_grad():
        assert_outputs_close(fresh(**inputs), adapted, atol=0, rtol=0)
        fresh.disable_adapters()
        assert_outputs_close(fresh(**inputs), plain, atol=0, rtol=0)


@pytest.mark.parametrize("cls, spec", MODEL_CASES)
def test_gradient_checkpointing_with_lora_gives_the_same_gradients(cls, spec):
    tester = TESTERS[spec]
    inputs = {**tester.make_inputs(2), **tester.loss_inputs}
    model = build(cls, spec=spec)
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same adapter weights both times
        lora = lora_model(model).train()
        if checkpointing:
            lora.get_base_model().gradient_checkpointing_enable()
            assert lora.get_base_model().is_gradient_checkpointing
        torch.manual_seed(1)  # losses that sample (ITM negatives, MLM masks) draw the same samples both times
        scalar_loss(lora(**inputs)).backward()
        gradients.append({n: p.grad for n, p in lora.named_parameters() if p.requires_grad})
    assert gradients[0] and all(grad is not None for grad in gradients[0].values())
    for name, grad in gradients[0].items():
        assert gradients[1][name] is not None, f"{name}: no gradient under checkpointing"
        torch.testing.assert_close(gradients[1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_lora_trains_under_five_percent_of_the_shipped_models():
    """The documented defaults on the shipped florence-tiny preset (the demo's model): under 5% trainable."""
    config = mf.load_preset("florence-tiny")
    classes = {f"class {index}": index for index in range(30)}
    builders = (
        lambda: mf.FlorenceModel(config),
        lambda: mf.FlorenceForImageClassification(mf.FlorenceVisionConfig.from_dict(
            {**config.vision_config.to_dict(), "label2id": classes, "id2label": {i: n for n, i in classes.items()}})),
        lambda: mf.FlorenceVisionModel(config.vision_config),
        lambda: mf.FlorenceTextModel(config.text_config),
    )
    for make in builders:
        model = make()
        trainable, total = parameter_counts(get_peft_model(model, default_lora_config(model, r=4)))
        print(f"{type(model).__name__} (florence-tiny, r=4): {trainable:,} / {total:,} = {100 * trainable / total:.2f}%")
        assert trainable / total < 0.05


def test_lora_config_errors_name_the_valid_layers():
    model = build(mf.FlorenceForImageClassification)
    with pytest.raises(ValueError, match=r"\['attention'\] match no LoRA-capable layer.*fc1, fc2, proj, qkv"):
        default_lora_config(model, target_modules=["qkv", "attention"])
    with pytest.raises(ValueError, match="regex 'nothing.*' matches no LoRA-capable layer"):
        default_lora_config(model, target_modules="nothing.*")
    with pytest.raises(ValueError, match=r"modules_to_save \['head'\] match no module.*vision_model, classifier"):
        default_lora_config(model, modules_to_save=["head"])
    assert lora_layer_names(model)["Linear"] == ["classifier", "fc1", "fc2", "proj", "qkv"]
    assert default_modules_to_save(get_peft_model(copy.deepcopy(model), default_lora_config(model))) == ["classifier"]
