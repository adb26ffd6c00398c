"""The sampled (grid_sample + GEMM) modulated deformable convolution equals torchvision's `deform_conv2d`."""

import pytest
import torch
from torchvision.ops import deform_conv2d

from modeling_florence.deform_conv_florence import _channel_chunks, modulated_deform_conv2d, sampled_deform_conv2d

# (batch, in, out, height, width, kernel, stride, padding, dilation, offset groups, offset scale in pixels)
CASES = [
    (2, 8, 6, 7, 9, 3, 1, 1, 1, 1, 2.0),  # DyHead's mid branch
    (1, 8, 8, 12, 10, 3, 2, 1, 1, 1, 2.0),  # DyHead's low branch (stride 2)
    (2, 6, 5, 6, 6, 3, 1, 2, 2, 3, 3.0),  # dilation, offset groups
    (1, 4, 3, 1, 5, 3, 1, 1, 1, 1, 1.0),  # a one-row map (P7 of small images)
    (1, 4, 4, 5, 5, 3, 1, 1, 1, 2, 20.0),  # offsets pointing far outside the map
    (1, 4, 4, 8, 7, 1, 2, 0, 1, 1, 1.5),  # 1x1 kernel, stride 2
]


def inputs(case, dtype=torch.float32, seed=0):
    batch, channels, out_channels, height, width, k, stride, padding, dilation, groups, scale = case
    out_h = (height + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=generator, dtype=dtype)
    offset = torch.randn(batch, 2 * groups * k * k, out_h, out_w, generator=generator, dtype=dtype) * scale
    mask = torch.rand(batch, groups * k * k, out_h, out_w, generator=generator, dtype=dtype)
    weight = torch.randn(out_channels, channels, k, k, generator=generator, dtype=dtype) / (channels * k * k) ** 0.5
    bias = torch.randn(out_channels, generator=generator, dtype=dtype)
    return [t.requires_grad_() for t in (x, offset, mask, weight, bias)], dict(stride=stride, padding=padding,
                                                                               dilation=dilation)


def run(function, tensors, options, seed=1):
    x, offset, mask, weight, bias = tensors
    out = function(x, offset, weight, bias, mask=mask, **options)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return (out, *torch.autograd.grad(out, tensors, upstream))


@pytest.mark.parametrize("case", CASES)
def test_outputs_and_gradients_equal_torchvision(case):
    tensors, options = inputs(case)
    expected = run(deform_conv2d, tensors, options)
    actual = run(sampled_deform_conv2d, tensors, options)
    for name, want, got in zip(["output", "x", "offset", "mask", "weight", "bias"], expected, actual):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("case", CASES)
def test_channel_chunks_for_more_threads_than_images_equal_torchvision(case, monkeypatch):
    """With more threads than images the channels are sampled in chunks (grid_sample's CPU backward is parallel over
    images only): same values and gradients as torchvision."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    batch, channels, groups = case[0], case[1], case[9]
    images, chunks = batch * groups, _channel_chunks(batch * groups, channels // groups)
    assert (channels // groups) % chunks == 0
    if images >= 8:  # the images already fill the threads
        assert chunks == 1
    else:  # chunked only far enough to fill them (or not at all when no divisor does)
        assert chunks == 1 or chunks * images >= 8
    tensors, options = inputs(case)
    expected = run(deform_conv2d, tensors, options)
    actual = run(sampled_deform_conv2d, tensors, options)
    for name, want, got in zip(["output", "x", "offset", "mask", "weight", "bias"], expected, actual):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_channel_chunks(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert _channel_chunks(images=1, channels=256) == 2 and _channel_chunks(images=2, channels=256) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)
    assert _channel_chunks(images=1, channels=256) == 8  # the first divisor of 256 from 6 up
    assert _channel_chunks(images=4, channels=256) == 2 and _channel_chunks(images=1, channels=5) == 1


def test_offsets_outside_the_map_sample_zero():
    tensors, options = inputs((1, 4, 4, 5, 5, 3, 1, 1, 1, 1, 1.0))
    x, offset, mask, weight, bias = tensors
    far = torch.full_like(offset, 50.0)
    out = sampled_deform_conv2d(x, far, weight, bias, mask=mask, **options)
    torch.testing.assert_close(out, bias.detach()[None, :, None, None].expand_as(out))


def test_without_mask_equals_unit_mask():
    tensors, options = inputs(CASES[0])
    x, offset, mask, weight, bias = tensors
    no_mask = sampled_deform_conv2d(x, offset, weight, bias, **options)
    torch.testing.assert_close(no_mask, deform_conv2d(x, offset, weight, bias, **options), atol=1e-4, rtol=1e-4)


def test_bfloat16_runs_natively_and_stays_close():
    tensors, options = inputs(CASES[0])
    reference = sampled_deform_conv2d(*[tensors[i] for i in (0, 1, 3, 4)], mask=tensors[2], **options)
    low = [t.detach().bfloat16().requires_grad_() for t in tensors]
    out = sampled_deform_conv2d(low[0], low[1], low[3], low[4], mask=low[2], **options)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and low[1].grad.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)


def test_cpu_dispatch_uses_the_sampled_path():
    tensors, options = inputs(CASES[1])
    x, offset, mask, weight, bias = tensors
    torch.testing.assert_close(modulated_deform_conv2d(x, offset, weight, bias, mask=mask, **options),
                               sampled_deform_conv2d(x, offset, weight, bias, mask=mask, **options), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dispatch_uses_torchvision_and_matches():
    tensors, options = inputs(CASES[2])
    cuda = [t.detach().cuda().requires_grad_() for t in tensors]
    expected = run(sampled_deform_conv2d, cuda, options)
    actual = run(modulated_deform_conv2d, cuda, options)
    for want, got in zip(expected, actual):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_torch_export_traces_the_sampled_path():
    tensors, options = inputs(CASES[1])
    x, offset, mask, weight, bias = (t.detach() for t in tensors)

    class Module(torch.nn.Module):
        def forward(self, x, offset, mask):
            return sampled_deform_conv2d(x, offset, weight, bias, mask=mask, **options)

    program = torch.export.export(Module(), (x, offset, mask))
    torch.testing.assert_close(program.module()(x, offset, mask), Module()(x, offset, mask))


@pytest.mark.parametrize("field, shape, message", [
    ("offset", (1, 17, 5, 5), "2 \\* offset_groups"),
    ("mask", (1, 8, 5, 5), "mask has 8 channels"),
    ("offset", (1, 18, 4, 5), "output's spatial size"),
])
def test_bad_shapes_raise_a_clear_error(field, shape, message):
    x, weight = torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3)
    given = {"offset": torch.zeros(1, 18, 5, 5), "mask": torch.ones(1, 9, 5, 5)}
    given[field] = torch.zeros(shape)
    with pytest.raises(ValueError, match=message):
        sampled_deform_conv2d(x, given["offset"], weight, padding=1, mask=given["mask"])


def test_a_trainable_and_a_frozen_weight_give_bit_identical_outputs():
    """A LoRA model (DyHead trained, weights require grad) and its reload (frozen) must agree exactly."""
    torch.manual_seed(0)
    x, offset, mask = torch.randn(2, 16, 3, 3), torch.randn(2, 18, 3, 3), torch.rand(2, 9, 3, 3)  # DyHead's top level
    weight = torch.randn(16, 16, 3, 3)
    with torch.no_grad():
        frozen = sampled_deform_conv2d(x, offset, weight, padding=1, mask=mask)
        trainable = sampled_deform_conv2d(x, offset, weight.clone().requires_grad_(), padding=1, mask=mask)
    assert torch.equal(frozen, trainable)
