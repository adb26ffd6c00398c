"""Tests of `modeling_florence/evaluation_florence_video.py`."""

import pytest
import torch

from modeling_florence import FlorenceForVideoClassification

from florence_testing import tiny_video_config
from florence_testing import perturb_


# --- fine-tuning with Trainer and multi-view evaluation ------------------------------------------------------------
def test_trainer_multi_view_evaluation_averages_each_videos_views(tmp_path):
    """The evaluation dataset yields all views of a video as one item; the Trainer's per-video logits are the log of
    the mean of the views' probabilities, computed by hand view by view, and the accuracy is taken on them."""
    from transformers import Trainer, TrainingArguments

    from modeling_florence.evaluation_florence_video import VideoViewsCollator, VideoViewsDataset

    torch.manual_seed(0)
    config = tiny_video_config()
    config.id2label, config.label2id = {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2}
    model = perturb_(FlorenceForVideoClassification(config)).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(300)  # confident, view-dependent predictions
    videos, views = 5, 3
    clips = torch.randn(videos * views, 4, 3, 24, 24)  # video-major: video 0's views first
    labels = torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        per_view = torch.cat([model(clips[i : i + 1]).logits for i in range(len(clips))])  # one view at a time
    by_hand = per_view.softmax(-1).view(videos, views, -1).mean(dim=1)
    assert not torch.allclose(by_hand, per_view.softmax(-1)[::views], atol=1e-3)  # the views really differ

    def accuracy(prediction):
        return {"top1": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean() * 100)}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True,
                             remove_unused_columns=False, label_names=["labels"], disable_tqdm=True)
    trainer = Trainer(model=model, args=args, eval_dataset=VideoViewsDataset(clips, labels, num_views=views),
                      data_collator=VideoViewsCollator(), compute_metrics=accuracy)
    prediction = trainer.predict(trainer.eval_dataset)
    assert prediction.predictions.shape == (videos, 3)  # one row per video, batches of 2 videos x 3 views
    torch.testing.assert_close(torch.from_numpy(prediction.predictions).exp(), by_hand, atol=1e-5, rtol=0)
    assert prediction.label_ids.tolist() == labels.tolist()
    expected_top1 = (by_hand.argmax(-1) == labels).float().mean().item() * 100
    assert prediction.metrics["test_top1"] == pytest.approx(expected_top1)
    expected_loss = torch.nn.functional.cross_entropy(by_hand.log(), labels).item()
    assert trainer.evaluate()["eval_loss"] == pytest.approx(expected_loss, abs=1e-5)
    with pytest.raises(ValueError, match="not 2 view"):
        VideoViewsDataset(clips, labels, num_views=2)
