"""Modulated deformable convolution (DCNv2) in plain PyTorch ops, and the device dispatch DyHead uses.

torchvision's CPU `deform_conv2d` loops over output positions in scalar C++: about 4x a dense convolution forward and
far worse backward. `sampled_deform_conv2d` computes the same function as one bilinear `grid_sample` of the K kernel
positions of every output pixel (zero outside the map, as torchvision), a multiply by the mask, then one batched GEMM
over (C x K): autograd, bfloat16 and `torch.export` work through the ops. `modulated_deform_conv2d` picks torchvision's
kernel for CUDA tensors and the sampled path otherwise; the choice follows the input's device, not a flag.
"""

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_shapes(x, offset, mask, weight, out_h, out_w) -> int:
    """Validate shapes as torchvision does and return the number of offset groups."""
    kernel = weight.shape[2] * weight.shape[3]
    if x.dim() != 4 or offset.dim() != 4 or weight.dim() != 4:
        raise ValueError("x, offset and weight must be 4-D: (B, C, H, W), (B, 2*G*kh*kw, Ho, Wo), (O, C, kh, kw)")
    if offset.shape[1] % (2 * kernel):
        raise ValueError(f"offset has {offset.shape[1]} channels: it needs 2 * offset_groups * {kernel}")
    groups = offset.shape[1] // (2 * kernel)
    if x.shape[1] % groups:
        raise ValueError(f"x has {x.shape[1]} channels, not divisible by the {groups} offset groups")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight expects {weight.shape[1]} input channels, x has {x.shape[1]} (no conv groups here)")
    if tuple(offset.shape[-2:]) != (out_h, out_w) or (mask is not None and tuple(mask.shape[-2:]) != (out_h, out_w)):
        raise ValueError(f"offset and mask must have the output's spatial size {(out_h, out_w)}")
    if mask is not None and mask.shape[1] != groups * kernel:
        raise ValueError(f"mask has {mask.shape[1]} channels: it needs offset_groups * {kernel} = {groups * kernel}")
    return groups


def _channel_chunks(images: int, channels: int) -> int:
    """Channel chunks S that make `images * S` >= the thread count (a divisor of `channels`; 1 when the images
    already fill the threads). grid_sample's CPU backward runs its images in parallel and each one serially, so a
    batch of 1 (detection at 800 x 1333) used one core; sampling channel chunks as separate images (a view of the
    same memory) computes the same values with every core busy."""
    threads = torch.get_num_threads()
    if images >= threads:
        return 1
    wanted = -(-threads // images)
    return next((chunk for chunk in range(wanted, channels + 1) if channels % chunk == 0), 1)


def _sampling_grid(offset, height, width, kernel_hw, stride, padding, dilation, groups):
    """grid_sample coordinates `(B * G, K, Ho * Wo, 2)` of the K deformed kernel positions of every output pixel."""
    batch, _, out_h, out_w = offset.shape
    kh, kw = kernel_hw
    kernel = kh * kw
    device, dtype = offset.device, offset.dtype
    rows = torch.arange(out_h, device=device, dtype=dtype) * stride[0] - padding[0]
    cols = torch.arange(out_w, device=device, dtype=dtype) * stride[1] - padding[1]
    taps_y = (torch.arange(kh, device=device, dtype=dtype) * dilation[0]).repeat_interleave(kw)
    taps_x = (torch.arange(kw, device=device, dtype=dtype) * dilation[1]).repeat(kh)
    base_y = taps_y[:, None, None] + rows[None, :, None]  # (K, Ho, 1)
    base_x = taps_x[:, None, None] + cols[None, None, :]  # (K, 1, Wo)
    offset = offset.view(batch * groups, kernel, 2, out_h, out_w)
    y = base_y + offset[:, :, 0]
    x = base_x + offset[:, :, 1]
    # align_corners=False: pixel p sits at (2p + 1) / size - 1, valid for maps of size 1 too
    grid = torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)
    return grid.view(batch * groups, kernel, out_h * out_w, 2)


def sampled_deform_conv2d(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """`torchvision.ops.deform_conv2d` (same arguments and layout) as grid_sample + mask + one GEMM."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h = _output_size(height, kh, stride[0], padding[0], dilation[0])
    out_w = _output_size(width, kw, stride[1], padding[1], dilation[1])
    groups = _check_shapes(x, offset, mask, weight, out_h, out_w)
    kernel = kh * kw
    grid = _sampling_grid(offset, height, width, (kh, kw), stride, padding, dilation, groups).to(x.dtype)
    chunks = _channel_chunks(batch * groups, channels // groups)
    sampled = F.grid_sample(x.reshape(batch * groups * chunks, channels // groups // chunks, height, width),
                            grid.repeat_interleave(chunks, dim=0) if chunks > 1 else grid,
                            mode="bilinear", padding_mode="zeros", align_corners=False)  # (B*G*S, C/G/S, K, Ho*Wo)
    sampled = sampled.view(batch * groups, channels // groups, kernel, out_h * out_w)
    if mask is not None:
        sampled = sampled * mask.reshape(batch * groups, 1, kernel, out_h * out_w).to(x.dtype)
    columns = sampled.reshape(batch, channels * kernel, out_h * out_w)  # (C, K) order = weight's (C, kh, kw)
    # bmm over the batch: matmul's broadcasting folds differently when `weight` requires grad, which changed the
    # last bits of the output between a trainable and a frozen copy of the same weights
    weight = weight.reshape(out_channels, channels * kernel).to(x.dtype)
    out = torch.bmm(weight.expand(batch, -1, -1), columns)
    if bias is not None:
        out = out + bias.to(x.dtype)[:, None]
    return out.view(batch, out_channels, out_h, out_w)


def modulated_deform_conv2d(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """DCNv2 on any device: torchvision's kernel on CUDA (in float32 for bfloat16 inputs, which it lacks), the
    sampled PyTorch path elsewhere (CPU, MPS, export), which runs bfloat16 natively."""
    if x.device.type != "cuda":
        return sampled_deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    dtype = x.dtype
    compute = torch.float32 if dtype == torch.bfloat16 else dtype
    cast = (lambda t: None if t is None else t.to(compute))
    out = deform_conv2d(cast(x), cast(offset), cast(weight), cast(bias), stride=stride, padding=padding,
                        dilation=dilation, mask=cast(mask))
    return out.to(dtype)
