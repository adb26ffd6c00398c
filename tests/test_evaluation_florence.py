"""Tests of `modeling_florence/evaluation_florence.py`."""

import pytest
import torch

from modeling_florence.evaluation_florence import TopKAccuracy, format_table, retrieval_recall, topk_accuracy


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_metrics_on_constructed_cases():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.0, 0.6, 0.4]])
    assert topk_accuracy(logits, torch.tensor([0, 1, 1]), ks=(1, 2)) == {"top1": pytest.approx(200 / 3),
                                                                         "top2": pytest.approx(100.0)}
    metric = TopKAccuracy(keep_in_memory=True)  # the same through `evaluate`, fed in two batches
    metric.add_batch(predictions=logits[:2].tolist(), references=[0, 1])
    metric.add_batch(predictions=logits[2:].tolist(), references=[1])
    assert metric.compute(ks=(1, 2)) == {"top1": pytest.approx(200 / 3), "top2": pytest.approx(100.0)}
    embeds = torch.eye(4)
    texts = torch.eye(4)[[0, 1, 3, 2]]  # pairs 2 and 3 swapped
    recall = retrieval_recall(embeds, texts, ks=(1, 4))
    assert recall["i2t_R@1"] == 50.0 and recall["t2i_R@1"] == 50.0 and recall["i2t_R@4"] == 100.0
    assert "i2t_R@1" in format_table(recall)
    with pytest.raises(ValueError, match="as many texts as images"):
        retrieval_recall(embeds, texts[:3])
