"""FlorenceForObjectDetection contracts: long class names truncated to the text positions; a closed-set detector
without classes refused."""

import pytest
import torch

import modeling_florence as mf
from tests.test_common import tiny_detection_config, tiny_text_config


def test_set_class_names_truncates_long_names_to_the_text_positions():
    torch.manual_seed(0)
    config = tiny_detection_config(text_config=tiny_text_config().to_dict(), projection_dim=24)
    model = mf.FlorenceForObjectDetection(config).eval()
    tokenizer = mf.FlorenceDetectionTokenizer.from_defaults()
    positions = config.text_config.max_position_embeddings
    long_name = " ".join(["striped"] * 100)
    model.set_class_names([long_name, "red circle"], tokenizer)
    assert model.class_embeddings.shape == (2, config.projection_dim)
    truncated = tokenizer([long_name], truncation=True, max_length=positions, return_tensors="pt")
    expected = model.get_class_embeddings(truncated["input_ids"], truncated["attention_mask"])[0]
    torch.testing.assert_close(model.class_embeddings[0], expected)


def test_a_closed_set_detector_without_classes_is_refused():
    with pytest.raises(ValueError, match="closed-set detector needs at least one class, got num_labels=0"):
        mf.FlorenceForObjectDetection(tiny_detection_config(num_labels=0))
