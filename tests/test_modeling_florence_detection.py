"""FlorenceForObjectDetection contracts."""

import pytest

import modeling_florence as mf
from tests.test_common import tiny_detection_config


def test_a_closed_set_detector_without_classes_is_refused():
    with pytest.raises(ValueError, match="closed-set detector needs at least one class, got num_labels=0"):
        mf.FlorenceForObjectDetection(tiny_detection_config(num_labels=0))
