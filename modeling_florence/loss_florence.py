# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""The UniCL loss (Florence Eq. 1-3), and its global-batch form for distributed training.

The only collectives of the package live here: a model's inference forward never communicates, and its logits are
always `(images, texts)` of the call. Only the training loss compares each process's pairs with the pairs of every
process (gathered with gradients), as open_clip's `ClipLoss` does, so N processes of b pairs give the loss and the
gradients of one process with N * b.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F


def unicl_loss(
    logits_per_image: torch.Tensor,
    labels: torch.Tensor,
    logits_per_text: torch.Tensor | None = None,
    row_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """UniCL loss (Florence Eq. 1-3): L = L_i2t + L_t2i, each averaged over its rows.

    Every pair whose text label equals the row's label is a positive, weighted 1/|P(i)|; with all labels distinct
    this is the symmetric InfoNCE of CLIP written as a sum (twice Transformers' `clip_loss`, which averages the two).

    Args:
        logits_per_image: `(rows, columns)` scaled similarities of row images to column texts.
        labels: `(columns,)` int64 labels of the column pairs (the global batch when training distributed).
        logits_per_text: `(rows, columns)` similarities of row texts to column images; defaults to
            `logits_per_image.T` (the single-process, square case).
        row_labels: `(rows,)` labels of the row pairs; defaults to `labels` (square case).
    """
    if logits_per_text is None:
        logits_per_text = logits_per_image.t()
    if row_labels is None:
        row_labels = labels
    if logits_per_image.ndim != 2 or logits_per_text.shape != logits_per_image.shape:
        raise ValueError(
            f"logits_per_image and logits_per_text must be 2-D of one shape, got {tuple(logits_per_image.shape)} "
            f"and {tuple(logits_per_text.shape)}"
        )
    rows, columns = logits_per_image.shape
    if labels.shape != (columns,) or row_labels.shape != (rows,):
        raise ValueError(
            f"labels must have shape ({columns},) and row labels ({rows},) to match logits of shape {(rows, columns)}, "
            f"got {tuple(labels.shape)} and {tuple(row_labels.shape)}"
        )
    positives = (row_labels[:, None] == labels[None, :]).to(logits_per_image.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True).clamp(min=1)
    loss_i2t = -(targets * F.log_softmax(logits_per_image, dim=-1)).sum(dim=-1).mean()
    loss_t2i = -(targets * F.log_softmax(logits_per_text, dim=-1)).sum(dim=-1).mean()
    return loss_i2t + loss_t2i


def distributed_world() -> tuple[int, int]:
    """`(world_size, rank)` of the default process group, `(1, 0)` outside distributed training."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each process the gradient of its own slice, summed over the
    losses of all processes (every process's loss depends on every process's features)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world_size, rank = distributed_world()
        ctx.rank, ctx.batch = rank, tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad_output = grad_output.contiguous()
        dist.all_reduce(grad_output, op=dist.ReduceOp.SUM)
        return grad_output[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def _check_equal_batches(tensor: torch.Tensor, world_size: int) -> None:
    """Collectives need one batch size everywhere; say so instead of hanging or mixing up rows."""
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.empty_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    if len({int(s) for s in sizes}) > 1:
        raise ValueError(
            f"Processes hold different batch sizes {[int(s) for s in sizes]}; the global UniCL batch needs equal "
            "per-process batches (use drop_last=True in the data loader)"
        )


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, keeping the autograd graph to each process's slice."""
    world_size, _ = distributed_world()
    if world_size == 1:
        return tensor
    _check_equal_batches(tensor, world_size)
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0 (labels: no gradient)."""
    world_size, _ = distributed_world()
    if world_size == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def global_batch_unicl_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """UniCL loss of this process's pairs against the pairs of all processes.

    Outside distributed training (or with one process) this is `unicl_loss` on the call's own logits. Under
    `torch.distributed` every process must call it with the same batch size (it gathers the features with gradients
    and the labels), as in open_clip's `ClipLoss(gather_with_grad=True, local_loss=True)`.

    Args:
        image_embeds, text_embeds: `(b, D)` L2-normalised features of this process's image-text pairs.
        logit_scale: the temperature `tau` (already exponentiated and clamped).
        labels: `(b,)` int64 UniCL labels; without them every pair is its own class (CLIP), numbered globally.
    """
    world_size, rank = distributed_world()
    batch = image_embeds.shape[0]
    if labels is None:
        labels = torch.arange(batch, device=image_embeds.device) + rank * batch
        all_labels = torch.arange(batch * world_size, device=image_embeds.device)
    else:
        all_labels = gather_no_grad(labels)
    all_image_embeds = gather_with_grad(image_embeds)
    all_text_embeds = gather_with_grad(text_embeds)
    logits_per_image = logit_scale * image_embeds @ all_text_embeds.t()
    logits_per_text = logit_scale * text_embeds @ all_image_embeds.t()
    return unicl_loss(logits_per_image, all_labels, logits_per_text, row_labels=labels)


__all__ = ["distributed_world", "gather_no_grad", "gather_with_grad", "global_batch_unicl_loss", "unicl_loss"]
