"""Tests of `modeling_florence/loss_florence.py`."""

import pytest
import torch
from transformers.models.clip.modeling_clip import image_text_contrastive_loss as clip_loss

from modeling_florence import unicl_loss


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
