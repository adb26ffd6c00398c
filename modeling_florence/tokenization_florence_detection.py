# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""The tokenizer saved with an open-vocabulary detector: Florence's CLIP BPE tokenizer, except for one pipeline.

Transformers' object-detection pipeline loads a tokenizer whenever the model folder has one, and with a tokenizer it
treats the model as a LayoutLM-style token classifier (it asks the image processor for OCR `words`). A detector
folder serves both `pipeline("zero-shot-object-detection")` (which needs the tokenizer for the candidate labels) and
`pipeline("object-detection")` (which must not get one), so this class declines to load for the latter only.
"""

from .processing_florence import default_tokenizer_path
from .tokenization_florence import FlorenceTokenizer


class FlorenceDetectionTokenizer(FlorenceTokenizer):
    """`FlorenceTokenizer` that the object-detection pipeline skips (see the module docstring)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if kwargs.get("_from_pipeline") == "object-detection":
            raise ValueError("The object-detection pipeline takes no tokenizer: it reads classes from config.id2label")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_defaults(cls) -> "FlorenceDetectionTokenizer":
        """The CLIP BPE tokenizer shipped with the package (no network)."""
        return cls.from_pretrained(default_tokenizer_path())


__all__ = ["FlorenceDetectionTokenizer"]
