# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""`FlorenceProcessor`: tokenizer + image processor + video processor, and the UniCL labels of texts.

Texts are cleaned as CLIP cleans them (ftfy, HTML unescaping, whitespace) before the CLIP BPE tokenizer, so ids
equal open_clip's, special-token strings in the text included (see `tokenization_florence`); they are truncated to
the 77 positions of the text tower (the end-of-text id kept last) and padded to the longest text.

Images and videos given as strings are read as local paths; URLs are downloaded only when a call passes
`allow_urls=True`. `from_pretrained` refuses a folder whose tokenizer files are missing or broken, naming the file.

UniCL treats pairs whose texts are identical as positives of each other. The label of a text is a stable 63-bit
hash (BLAKE2b) of its token ids as the text tower reads them (cleaned, lower-cased, truncated to 77 positions):
texts with identical ids are positives, and the label is the same in every process and run, unlike Python's salted
`hash`.
"""

import functools
import hashlib
import html
import re
from pathlib import Path

import torch
from transformers import ProcessorMixin

from .image_processing_florence import FlorenceImageProcessor
from .tokenization_florence import FlorenceTokenizer, encode_like_open_clip, load_checked
from .video_processing_florence import FlorenceVideoProcessor

CONTEXT_LENGTH = 77
_WHITESPACE = re.compile(r"\s+")


def default_tokenizer_path() -> Path:
    """The CLIP BPE tokenizer files shipped with the package (built by conversion/build_tokenizer.py)."""
    from .configuration_florence import presets_dir

    return presets_dir() / "tokenizer"


def clean_text(text: str) -> str:
    """CLIP's text clean-up: fix mojibake (ftfy, when installed), unescape HTML twice, collapse whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip()


@functools.lru_cache(maxsize=1)
def _label_tokenizer() -> FlorenceTokenizer:
    return FlorenceTokenizer.from_pretrained(default_tokenizer_path())


def ids_label(content_ids, tokenizer=None) -> int:
    """Stable UniCL label of a text's token ids (start/end ids excluded): texts with identical ids share it, in every
    process and run. It hashes (BLAKE2b, 63 bits) the ids decoded to words, which for plain words is the cleaned,
    lower-cased text itself ("a red circle")."""
    words = (tokenizer or _label_tokenizer()).decode(list(content_ids), clean_up_tokenization_spaces=False).strip()
    digest = hashlib.blake2b(words.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


@functools.lru_cache(maxsize=1 << 16)  # captions repeat across steps, and ftfy cleaning costs ~0.1 ms a text
def text_label(text: str, max_length: int = CONTEXT_LENGTH) -> int:
    """Stable UniCL label of a text as the text tower reads it: cleaned, tokenized and truncated to `max_length`
    positions exactly as `FlorenceProcessor` does, so two texts with the same ids (equal up to case, spacing, or past
    the truncation) are positives of each other."""
    tokenizer = _label_tokenizer()
    return ids_label(encode_like_open_clip(tokenizer, [clean_text(text)])[0][: max_length - 2], tokenizer)


def text_labels(texts: list[str], max_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    return torch.tensor([text_label(text, max_length) for text in texts], dtype=torch.long)


class FlorenceProcessor(ProcessorMixin):
    """Prepares Florence inputs: `input_ids`/`attention_mask` from text, `pixel_values` from images,
    `pixel_values_videos` from videos, and UniCL `labels` of the texts on request."""

    def __init__(self, image_processor=None, tokenizer=None, video_processor=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor, **kwargs)

    @classmethod
    def from_defaults(cls, image_size: int = 224, num_frames: int = 8, **image_kwargs) -> "FlorenceProcessor":
        """A processor from the shipped tokenizer and CLIP-style image/video settings, with no network."""
        size = {"shortest_edge": image_size}
        crop = {"height": image_size, "width": image_size}
        return cls(
            image_processor=FlorenceImageProcessor(size=size, crop_size=crop, **image_kwargs),
            tokenizer=FlorenceTokenizer.from_pretrained(default_tokenizer_path()),
            video_processor=FlorenceVideoProcessor(num_frames=num_frames, size=size, crop_size=crop),
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Transformers' loading, with the tokenizer files checked first and the vocabulary after (also for folders
        saved with Transformers' `CLIPTokenizer`, which would otherwise load without its vocabulary)."""
        return load_checked(super().from_pretrained, pretrained_model_name_or_path, *args, **kwargs)

    def __call__(self, text=None, images=None, videos=None, return_labels: bool = False, allow_urls: bool = False,
                 **kwargs):
        if text is None and images is None and videos is None:
            raise ValueError("FlorenceProcessor needs at least one of text, images or videos")
        return_tensors = kwargs.pop("return_tensors", "pt")
        outputs = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not texts:
                raise ValueError("text is an empty list: pass at least one string (or text=None for images only)")
            if not all(isinstance(t, str) for t in texts):
                raise ValueError(f"text must be a string or a list of strings, got {type(text).__name__}")
            text_kwargs = {k: kwargs.pop(k) for k in ("padding", "truncation", "max_length") if k in kwargs}
            max_length = text_kwargs.get("max_length")
            rows = self.token_rows(texts, text_kwargs.get("truncation", True), max_length)
            outputs.update(self.pad_rows(rows, text_kwargs.get("padding", True), max_length, return_tensors))
            if return_labels:  # from the ids the model reads: texts equal up to the truncation are positives
                outputs["labels"] = torch.tensor([ids_label(row[1:-1], self.tokenizer) for row in rows])
        elif return_labels:
            raise ValueError("return_labels=True needs text: UniCL labels are computed from the texts")
        if images is not None:
            outputs.update(self.image_processor(images, return_tensors=return_tensors, allow_urls=allow_urls, **kwargs))
        if videos is not None:
            outputs.update(self.video_processor(videos, return_tensors=return_tensors, allow_urls=allow_urls))
        return outputs if return_tensors is None else _batch(outputs)

    def tokenize(self, texts: list[str], padding=True, truncation: bool = True, max_length: int | None = None,
                 return_tensors="pt"):
        """`input_ids`/`attention_mask` of raw texts, equal to open_clip's ids: cleaned, encoded with open_clip's
        reading of special-token strings, wrapped in start/end ids (truncated to `max_length`, 77 by default, with
        the end id kept last), then padded by the tokenizer."""
        rows = self.token_rows(texts, truncation, max_length)
        return self.pad_rows(rows, padding=padding, max_length=max_length, return_tensors=return_tensors)

    def token_rows(self, texts: list[str], truncation: bool = True, max_length: int | None = None) -> list[list[int]]:
        """Unpadded ids of raw texts: start id, content (truncated to `max_length - 2`), end id."""
        max_length = max_length or CONTEXT_LENGTH
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        rows = []
        # truncated below, so the tokenizer's "may result in indexing errors" warning does not apply
        for content in encode_like_open_clip(self.tokenizer, [clean_text(text) for text in texts], verbose=not truncation):
            rows.append([bos] + (content[: max_length - 2] if truncation else content) + [eos])
        return rows

    def pad_rows(self, rows: list[list[int]], padding=True, max_length: int | None = None, return_tensors="pt"):
        """`input_ids`/`attention_mask` of `token_rows`, padded by the tokenizer (to `max_length` with
        `padding="max_length"`)."""
        pad_to = (max_length or CONTEXT_LENGTH) if padding == "max_length" else None
        return self.tokenizer.pad({"input_ids": rows}, padding=padding, max_length=pad_to,
                                  return_tensors=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "pixel_values_videos"]


def _batch(outputs: dict):
    from transformers import BatchFeature

    return BatchFeature({k: v for k, v in outputs.items()}, tensor_type=None)


__all__ = ["FlorenceProcessor", "clean_text", "default_tokenizer_path", "ids_label", "text_label", "text_labels"]
