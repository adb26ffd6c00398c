"""FlorenceForVideoClassification contracts: labels, and pixel_values that are not a tensor."""

import pytest
import torch

import modeling_florence as mf
from tests.test_common import tiny_video_classification_config


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return mf.FlorenceForVideoClassification(tiny_video_classification_config())


def clips(batch=2):
    config = tiny_video_classification_config().vision_config
    return torch.randn(batch, config.num_frames, 3, 24, 24)


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [5, -7]])
def test_labels_out_of_range_are_refused(classifier, labels):
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\) \(num_labels\) or -100"):
        classifier(pixel_values=clips(), labels=torch.tensor(labels))


def test_all_ignored_labels_give_a_zero_loss_with_gradients(classifier):
    classifier.zero_grad()
    loss = classifier(pixel_values=clips(), labels=torch.tensor([-100, -100])).loss
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in classifier.parameters())
    classifier.eval()
    videos = clips()
    some = classifier(pixel_values=videos, labels=torch.tensor([-100, 2])).loss  # the other video's loss alone
    alone = classifier(pixel_values=videos[1:], labels=torch.tensor([2])).loss
    torch.testing.assert_close(some, alone)


def test_a_processor_output_as_pixel_values_is_refused(classifier):
    from transformers import BatchFeature

    with pytest.raises(ValueError, match="pixel_values must be a tensor, got BatchFeature"):
        classifier(pixel_values=BatchFeature({"pixel_values_videos": clips()}), num_views=1)
