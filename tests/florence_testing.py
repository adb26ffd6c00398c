"""Helpers shared by several test files: tiny configs, inputs and reference code."""

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.video.swin_transformer import SwinTransformer3d

import modeling_florence as mf
from modeling_florence import (
    FlorenceVideoConfig,
    FlorenceVideoVisionConfig,
    FlorenceImageProcessor,
    FlorenceImageProcessorPil,
    FlorenceVisionConfig,
)
from tests.test_common import GENERATION_DAVIT, tiny_detection_config, tiny_text_config, tiny_vqa_config


def open_vocabulary_config(**overrides):
    return tiny_detection_config(text_config=tiny_text_config().to_dict(), projection_dim=24, **overrides)


def tiny_vision(**overrides) -> FlorenceVideoVisionConfig:
    fields = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], patch_size=(2, 4, 4), window_size=(2, 3, 3),
                  drop_path_rate=0.0, num_frames=4)
    fields.update(overrides)
    return FlorenceVideoVisionConfig(**fields)


def tiny_video_config(**vision_overrides) -> FlorenceVideoConfig:
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return FlorenceVideoConfig(vision_config=tiny_vision(**vision_overrides).to_dict(), text_config=text,
                               projection_dim=24)


IMAGE_SIZE = 48


# Runs in a fresh interpreter where `import modeling_florence` fails: everything must come from the folder.
REMOTE_LOAD = r"""
import json, sys
sys.modules["modeling_florence"] = None
import numpy as np, torch
from PIL import Image
import transformers
from transformers import AutoConfig, AutoModel, pipeline
folder, inputs_path, pipelines, processing, auto_class, video = (
    sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5], sys.argv[6])
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
AutoModel.from_pretrained(folder, trust_remote_code=True)
auto = getattr(transformers, auto_class)
if auto_class == "AutoBackbone":
    # Transformers 5.23's AutoBackbone asks the Hub whether a name is a repository before reading it, which fails for
    # a local path; a Hub repo id passes that check and then takes this very path.
    from transformers.models.auto.auto_factory import _BaseAutoBackboneClass
    model = super(_BaseAutoBackboneClass, auto).from_pretrained(folder, trust_remote_code=True).eval()
else:
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
assert "modeling_florence" not in type(model).__module__.split(".")[0], type(model).__module__
loaded = {name: getattr(transformers, name).from_pretrained(folder, trust_remote_code=True) for name in processing}
inputs = {k: torch.tensor(v) if k != "pixel_values" else torch.tensor(v, dtype=torch.float32)
          for k, v in json.load(open(inputs_path)).items()}
with torch.no_grad():
    out = model(**inputs)
first = next(v for v in out.values() if isinstance(v, torch.Tensor) or isinstance(v, tuple))
first = first[0] if isinstance(first, tuple) else first
result = {"model": type(model).__name__, "output": first.tolist(),
          "processing": {name: type(value).__name__ for name, value in loaded.items()}}
if "AutoTokenizer" in loaded:
    result["ids"] = loaded["AutoTokenizer"](["a red circle"])["input_ids"]
if "AutoProcessor" in loaded and hasattr(loaded["AutoProcessor"], "answer_vocabulary"):
    result["answers"] = loaded["AutoProcessor"].answer_vocabulary
image = Image.fromarray(np.full((40, 56, 3), 200, np.uint8))
result["pipelines"] = [
    pipeline(task, model=folder, trust_remote_code=True)(image if kind == "image" else video, **kwargs)
    for task, kwargs, kind in pipelines
]
print("RESULT" + json.dumps(result))
"""


def assert_same_predictions(remote: list[dict], local: list[dict]) -> None:
    """Pipeline results in the same order with the same labels, scores and boxes."""
    assert [r["label"] for r in remote] == [r["label"] for r in local] and local
    np.testing.assert_allclose([r["score"] for r in remote], [r["score"] for r in local], atol=1e-5)
    assert [r.get("box") for r in remote] == [r.get("box") for r in local]


BACKENDS = [FlorenceImageProcessor, FlorenceImageProcessorPil]


class ResizeRecorder:
    """Wraps a processor's resize and records the pixels of each input."""

    def __init__(self, processor):
        self.inputs, self.original = [], processor.resize
        processor.resize = self

    def __call__(self, image, *args, **kwargs):
        self.inputs.append(int(np.prod(image.shape[-2:])))
        return self.original(image, *args, **kwargs)


def same_weights(module_a, module_b) -> bool:
    a, b = module_a.state_dict(), module_b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def tiny_window7_vision_config(**overrides) -> FlorenceVisionConfig:
    """A tiny CoSwin with Swin's window of 7 (test_common's `tiny_vision_config` uses 4)."""
    config = dict(embed_dim=16, depths=[1, 2, 1], num_heads=[1, 2, 4], window_size=7, drop_path_rate=0.0)
    config.update(overrides)
    return FlorenceVisionConfig(**config)


def reference_dyhead_block(block, features, fit):
    """Dai et al. 2021, Eq. 2-5 as the official code orders them: spatial-aware (DCNv2 on levels L-1, L, L+1 with
    offsets/mask from level L), scale-aware (hard-sigmoid of a 1x1 conv on the pooled branch), mean, task-aware DyReLU."""
    def branch(module, x, offset, mask, stride):
        y = reference_deform_conv(x, offset, mask, module.conv.weight, module.conv.bias, stride)
        return F.group_norm(y, module.norm.num_groups, module.norm.weight, module.norm.bias, module.norm.eps)

    def scale_weight(x):
        pooled = x.mean(dim=(2, 3), keepdim=True)
        value = F.relu(F.conv2d(pooled, block.scale_attention.conv.weight, block.scale_attention.conv.bias))
        return torch.clamp((value + 3) / 6, 0, 1)

    outputs = []
    for level, x in enumerate(features):
        offset_mask = F.conv2d(x, block.spatial_conv_offset.weight, block.spatial_conv_offset.bias, padding=1)
        offset, mask = offset_mask[:, :18], torch.sigmoid(offset_mask[:, 18:])
        branches = [branch(block.spatial_conv_mid, x, offset, mask, 1)]
        if level > 0:
            branches.append(branch(block.spatial_conv_low, features[level - 1], offset, mask, 2))
        if level < len(features) - 1:
            coarse = features[level + 1]
            high_offset, high_mask = fit(offset, mask, *coarse.shape[-2:])
            high = branch(block.spatial_conv_high, coarse, high_offset, high_mask, 1)
            branches.append(F.interpolate(high, size=x.shape[-2:], mode="bilinear", align_corners=True))
        fused = sum(b * scale_weight(b) for b in branches) / len(branches)
        theta = block.task_attention
        hidden = F.relu(F.linear(fused.mean(dim=(2, 3)), theta.reduce.weight, theta.reduce.bias))
        a1, b1, a2, b2 = torch.clamp((F.linear(hidden, theta.expand.weight, theta.expand.bias) + 3) / 6, 0, 1).chunk(4, 1)
        pieces = [(a1 - 0.5) * 2 + 1, b1 - 0.5, (a2 - 0.5) * 2, b2 - 0.5]
        a1, b1, a2, b2 = (p[:, :, None, None] for p in pieces)
        outputs.append(torch.maximum(fused * a1 + b1, fused * a2 + b2))
    return outputs


# --- parity with torchvision's Video Swin ------------------------------------------------------------------------
def tiny_torchvision_swin3d() -> SwinTransformer3d:
    torch.manual_seed(0)
    model = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=12, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                              window_size=[8, 7, 7], num_classes=5).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def build(cls=mf.FlorenceForVQA, seed=0, **overrides):
    torch.manual_seed(seed)
    return cls(tiny_vqa_config(**overrides)).eval()


PLAIN_TEXTS = [
    "a photo of a cat.",
    "Café crème brûlée à la française",
    "🙂 emoji 👍🏽 test 🚀",
    "日本語のテキスト and 中文",
    "Hello,   World!!  123 4567 3.14",
    "it's the cat's toy, isn't it? (yes) [no] {maybe}",
    "",
    "   ",
    "naïve façade ÆØÅ ß",
    "tab\tnew\nline",
    "word " * 120,  # far longer than 77 tokens
]


def padded_like_open_clip(input_ids, attention_mask):
    """open_clip pads with 0; ours (like Transformers' CLIP) with <|endoftext|>: compare the real tokens."""
    return torch.where(attention_mask.bool(), input_ids, torch.zeros_like(input_ids))


# ----------------------------------------------------------------------------------------------------------------------
# A DyHead block against a from-the-paper reference
# ----------------------------------------------------------------------------------------------------------------------
def reference_deform_conv(x, offset, mask, weight, bias, stride):
    """DCNv2 from its definition: y(p) = sum_k w_k * m_k(p) * x(p * stride - 1 + p_k + dp_k), bilinear with zeros
    outside, written with grid_sample (sampling point (y, x) at exactly the pixel grid: align_corners=True)."""
    batch, _, height, width = x.shape
    out_h, out_w = offset.shape[-2:]
    ys = torch.arange(out_h, dtype=x.dtype)[:, None] * stride - 1
    xs = torch.arange(out_w, dtype=x.dtype)[None, :] * stride - 1
    out = bias[None, :, None, None].expand(batch, -1, out_h, out_w).clone()
    for k in range(9):
        ky, kx = divmod(k, 3)
        sample_y = ys + ky + offset[:, 2 * k]
        sample_x = xs + kx + offset[:, 2 * k + 1]
        grid = torch.stack([sample_x / (width - 1) * 2 - 1, sample_y / (height - 1) * 2 - 1], dim=-1)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out = out + torch.einsum("oc,bchw->bohw", weight[:, :, ky, kx], sampled * mask[:, k : k + 1])
    return out


def randomize_(module: torch.nn.Module) -> torch.nn.Module:
    """Make norms, biases and bias tables non-trivial so a wrong mapping cannot hide behind identity init."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias") or "bias_table" in name or "norm" in name:
                noise = torch.randn(parameter.shape, generator=generator) * 0.2
                parameter.copy_(noise + (1.0 if name.endswith("weight") else 0.0))
    return module


def perturb_(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Add noise to norms, biases and bias tables: non-trivial norms, biases and bias tables, so a wrong mapping cannot hide behind identity init."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias") or "bias_table" in name or "norm" in name or "layernorm" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return module


def davit_stage_states(florence2, pixels: torch.Tensor) -> list[torch.Tensor]:
    """Transformers' `Florence2VisionBackbone` hidden states at the end of each stage (stage1, stage2, ...)."""
    with torch.no_grad():
        states = florence2.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    ends = torch.tensor(GENERATION_DAVIT["depths"]).cumsum(0).tolist()
    return [states[end] for end in ends]


def assert_one_training_step(model, loss_of) -> None:
    """`loss_of(model)` is finite; one AdamW step changes every parameter that got a gradient, the DaViT's too."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    loss = loss_of(model)
    assert torch.isfinite(loss), loss
    loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if name in before and not torch.equal(p, before[name])}
    assert any(name.startswith("vision_model.") for name in changed), "the DaViT did not train"
    unchanged = [name for name, p in model.named_parameters()
                 if p.grad is not None and p.grad.abs().sum() > 0 and name not in changed]
    assert not unchanged, unchanged
