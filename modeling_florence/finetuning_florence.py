# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Deprecated alias (kept for one release): classification and retrieval fine-tuning moved to
`modeling_florence.training_florence_classification`, `require_columns` to `modeling_florence.training_florence`.
This module is that module under its old name, so imports and monkeypatches of either name reach the same objects."""

import sys

from . import training_florence_classification

sys.modules[__name__] = training_florence_classification
