# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Florence-2 processing: task prompts, location tokens, parsing of generated text, detection formats.

`FlorenceGenerationProcessor` is Transformers' `Florence2Processor` (the same tasks and prompt templates, the same
`post_process_generation` results) with what users ask for:

- **Tasks are checked.** An unknown `<TASK>` token, or a task that needs text (`<CAPTION_TO_PHRASE_GROUNDING>`,
  `<REFERRING_EXPRESSION_SEGMENTATION>`, ...) given none, is a `ValueError` naming the task and the fix. Region tasks
  take their region as location tokens (`region_prompt` writes them from a pixel box).
- **User text is text.** The text a user passes after a task (a caption, an expression) is tokenised in pieces so
  that a literal `<loc_12>`, `<od>` or `<image>` in it is ordinary BPE text, never the special token. Prompts
  without such literals give exactly Transformers' ids.
- **Locations.** `quantize` is `floor(x / (W / 1000))` clamped to 0..999 (never `<loc_1000>`); `dequantize` gives
  the bin centres `(bin + 0.5) * W / 1000` as floats (Transformers' parser truncates them to ints; ours keeps floats,
  and `int()` of ours equals Transformers').
- **Partial objects are counted.** `post_process_generation(..., return_dropped=True)` adds how many location runs
  could not form an object (an unclosed box, an odd polygon coordinate, a truncated quad) under `"dropped"`.
- **Detection formats.** `to_detection_results` gives the object-detection pipeline's `{"score", "label", "box"}`
  list, `to_coco_results` COCO's `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}` list.

Models trained here use `FlorenceGenerationTokenizer`: the shipped CLIP BPE vocabulary plus `<image>`, the 1,000
location tokens and Florence-2's markup tokens, offline. Real Florence-2 checkpoints bring their own BART tokenizer
(which must know `<image>`, as the `florence-community` folders do).
"""

import functools
import math
import re

import numpy as np
import torch
from PIL import Image as PILImage
from transformers import AddedToken, BatchFeature, CLIPImageProcessor, CLIPTokenizer
from transformers.models.florence2.processing_florence2 import Florence2PostProcessor, Florence2Processor

NUM_BINS = 1000
IMAGE_TOKEN = "<image>"
LOCATION_TOKENS = [f"<loc_{index}>" for index in range(NUM_BINS)]
# Florence-2's markup tokens (the original processor's additions), after the location tokens.
MARKUP_TOKENS = [
    "<od>", "</od>", "<ocr>", "</ocr>", "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>",
    "</grounding>", "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
    "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>",
]
# The parsing rules of Transformers' converter for the florence-community folders (banned grounding phrases kept short).
DEFAULT_POST_PROCESSOR_CONFIG = {
    "ocr": {"pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
            "area_threshold": 0.0},
    "phrase_grounding": {"banned_grounding_tokens": ["the image", "image", "images", "it", "them", "this", "that"]},
    "pure_text": {}, "description_with_bboxes": {}, "description_with_polygons": {}, "polygons": {}, "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}
_TASK_TOKEN = re.compile(r"^\s*(<[A-Z][A-Z_]*>)")
_REGION_INPUT = re.compile(r"^(?:<loc_\d{1,3}>){4,}$")
_LOCATION = re.compile(r"<loc_(\d+)>")
_LOCATION_RUN = re.compile(r"(?:<loc_\d+>)+")


# ----------------------------------------------------------------------------------------------------------------------
# Locations
# ----------------------------------------------------------------------------------------------------------------------
def quantize(coordinates, size: tuple[int, int]) -> list[int]:
    """Pixel coordinates `x0, y0, x1, y1, ...` (x at even, y at odd positions) of an image of `size = (width, height)`
    -> location bins `floor(x / (W / 1000))` clamped to 0..999."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive (width, height), got {size}")
    bins = []
    for index, value in enumerate(coordinates):
        per_bin = (width if index % 2 == 0 else height) / NUM_BINS
        bins.append(min(max(math.floor(float(value) / per_bin), 0), NUM_BINS - 1))
    return bins


def dequantize(bins, size: tuple[int, int]) -> list[float]:
    """Location bins (x at even, y at odd positions) -> pixel coordinates at the bin centres `(bin + 0.5) * W / 1000`."""
    width, height = size
    return [(int(b) + 0.5) * (width if index % 2 == 0 else height) / NUM_BINS for index, b in enumerate(bins)]


def location_text(coordinates, size: tuple[int, int]) -> str:
    """`<loc_..>` tokens of pixel coordinates (a box, quad or polygon), for targets and region prompts."""
    return "".join(f"<loc_{b}>" for b in quantize(coordinates, size))


def count_partial_objects(text: str, post_processing_type: str) -> int:
    """Location runs in generated text that cannot form a whole object for this kind of result: a box run whose
    length is not a multiple of 4 (or under 4), a quad run not of 8, a polygon run of odd length (or under 6)."""
    if post_processing_type in ("description_with_bboxes", "bboxes", "phrase_grounding"):
        return sum(1 for run in _LOCATION_RUN.findall(text) if len(_LOCATION.findall(run)) % 4)
    if post_processing_type == "ocr":
        return sum(1 for run in _LOCATION_RUN.findall(text) if len(_LOCATION.findall(run)) != 8)
    if post_processing_type in ("polygons", "description_with_polygons", "description_with_bboxes_or_polygons"):
        dropped = 0
        for run in _LOCATION_RUN.findall(text):
            n = len(_LOCATION.findall(run))
            dropped += n % 2 == 1 or n < 6 if "<poly>" in text or post_processing_type == "polygons" else n % 4 != 0
        unclosed = text.count("<poly>") - text.count("</poly>")
        return dropped + max(unclosed, 0)
    return 0


class FlorenceGenerationPostProcessor(Florence2PostProcessor):
    """Transformers' parser, dequantising to float bin centres; generated ids are decoded by the tokenizer itself
    (Transformers' per-token decoding leaves CLIP's `</w>` word ends in the text), its bos/eos/pad strings removed."""

    def strip_special(self, text: str) -> str:
        for token in {self.tokenizer.bos_token, self.tokenizer.eos_token, self.tokenizer.pad_token} - {None}:
            text = text.replace(token, "")
        return text

    def decode_with_spans(self, token_ids: list[int]) -> tuple[str, list]:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return self.strip_special(text), []

    def dequantize(self, locations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        width, height = size
        scale = torch.tensor([width, height] * (locations.shape[-1] // 2), dtype=torch.float64) / NUM_BINS
        return (locations.double() + 0.5) * scale


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer for models trained here
# ----------------------------------------------------------------------------------------------------------------------
class FlorenceGenerationTokenizer(CLIPTokenizer):
    """CLIP's BPE plus `<image>` (special), the 1,000 location tokens and Florence-2's markup tokens."""

    image_token = IMAGE_TOKEN

    @property
    def image_token_id(self) -> int:
        return self.convert_tokens_to_ids(self.image_token)

    @classmethod
    def from_defaults(cls) -> "FlorenceGenerationTokenizer":
        """The shipped CLIP tokenizer (configuration/tokenizer) with the Florence-2 tokens added; no network."""
        from .processing_florence import default_tokenizer_path

        # `<image>` and the task tokens the processor writes must stay tokens (the shipped two-tower tokenizer splits
        # special strings); user text is kept plain by the processor itself (`split_prompt`).
        tokenizer = cls.from_pretrained(default_tokenizer_path(), model_max_length=1024, split_special_tokens=False)
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in LOCATION_TOKENS + MARKUP_TOKENS])
        return tokenizer


# ----------------------------------------------------------------------------------------------------------------------
# Processor
# ----------------------------------------------------------------------------------------------------------------------
class FlorenceGenerationProcessor(Florence2Processor):
    """Transformers' `Florence2Processor` with checked tasks, user text kept as text, float locations, counted partial
    objects and detection formats (see the module docstring)."""

    def __init__(self, image_processor=None, tokenizer=None, num_additional_image_tokens: int = 0,
                 post_processor_config: dict | None = None, **kwargs):
        post_processor_config = post_processor_config or DEFAULT_POST_PROCESSOR_CONFIG
        super().__init__(image_processor, tokenizer, num_additional_image_tokens, post_processor_config, **kwargs)
        self.post_processor = FlorenceGenerationPostProcessor(config=post_processor_config, tokenizer=tokenizer)

    @classmethod
    def from_defaults(cls, image_size: int = 768, image_seq_length: int = 577) -> "FlorenceGenerationProcessor":
        """Florence-2's image processing (square resize, bicubic, no crop, ImageNet mean/std) at `image_size`, with
        `image_seq_length` `<image>` tokens (`model.num_image_tokens(image_size, image_size)`), and the shipped
        tokenizer with the Florence-2 tokens."""
        image_processor = CLIPImageProcessor(
            size={"height": image_size, "width": image_size}, do_center_crop=False, resample=3,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], image_seq_length=image_seq_length,
        )
        return cls(image_processor=image_processor, tokenizer=FlorenceGenerationTokenizer.from_defaults())

    @property
    def tasks(self) -> list[str]:
        return sorted(self.tasks_answer_post_processing_type)

    # -- prompts -------------------------------------------------------------------------------------------------------
    def split_prompt(self, prompt: str) -> tuple[str, str, str]:
        """`prompt` -> (text before the user text, user text, text after it), after the task's template; a prompt
        without a task token is free text (all of it user text). Unknown tasks, and tasks missing or refusing
        text, are `ValueError`s."""
        if not isinstance(prompt, str):
            raise TypeError(f"text must be a string or a list of strings, got {type(prompt).__name__}")
        match = _TASK_TOKEN.match(prompt)
        if match is None:
            return "", prompt, ""
        task, user_text = match.group(1), prompt[match.end():].strip()
        if task in self.task_prompts_without_inputs:
            if user_text:
                raise ValueError(f"Task {task} takes no text input, got {user_text!r}: pass the task token alone")
            return self.task_prompts_without_inputs[task], "", ""
        if task not in self.task_prompts_with_input:
            raise ValueError(f"Unknown task {task}: Florence-2 tasks are {', '.join(self.tasks)}")
        if not user_text:
            raise ValueError(f"Task {task} needs text input after the task token, e.g. '{task}a red circle'")
        if task.startswith("<REGION_TO_") and not _REGION_INPUT.match(user_text):
            raise ValueError(f"Task {task} takes a region as location tokens (<loc_x0><loc_y0><loc_x1><loc_y1>), got "
                             f"{user_text!r}: write it with processor.region_prompt(task, box, image_size)")
        before, after = self.task_prompts_with_input[task].split("{input}")
        return before.rstrip(" "), (" " if before.endswith(" ") else "") + user_text, after

    def region_prompt(self, task: str, box, image_size: tuple[int, int]) -> str:
        """A region task's prompt for a pixel `box` (x0, y0, x1, y1) of an image of `image_size = (width, height)`."""
        if not task.startswith("<REGION_TO_") or task not in self.task_prompts_with_input:
            raise ValueError(f"{task} is not a region task (<REGION_TO_CATEGORY>, <REGION_TO_DESCRIPTION>, ...)")
        return task + location_text(box, image_size)

    def encode_text(self, text: str) -> list[int]:
        """Ids of user text as plain text: cut before the first letter inside every added-token literal, so no piece
        holds one (cuts fall on pre-tokenizer boundaries, so the ids are those of text without added tokens)."""
        pattern = self._added_token_pattern()
        pieces, start = [], 0
        for match in pattern.finditer(text) if pattern else ():
            letter = next((i for i, c in enumerate(match.group()) if c.isalnum()), 1)
            pieces.append(text[start : match.start() + letter])
            start = match.start() + letter
        pieces.append(text[start:])
        return [i for piece in pieces if piece for i in self.tokenizer.encode(piece, add_special_tokens=False)]

    def _added_token_pattern(self):
        """A regex of the tokenizer's added-token strings, longest first."""
        return _literal_pattern(tuple(sorted(self.tokenizer.get_added_vocab(), key=lambda t: (-len(t), t))))

    def encode_prompt(self, prompt: str) -> list[int]:
        """`<image>` x image_seq_length, bos, the task's prompt (user text as plain text), eos."""
        before, user_text, after = self.split_prompt(prompt)
        encode = lambda part: self.tokenizer.encode(part, add_special_tokens=False) if part else []  # noqa: E731
        ids = [self.image_token_id] * (self.num_image_tokens + self.num_additional_image_tokens)
        ids += [self.tokenizer.bos_token_id] + encode(before)
        ids += encode(user_text) if _REGION_INPUT.match(user_text.strip()) else self.encode_text(user_text)
        return ids + encode(after) + [self.tokenizer.eos_token_id]

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs):
        """`pixel_values` of the images, `input_ids` / `attention_mask` of their prompts (one per image; right
        padding)."""
        if images is None:
            raise ValueError("Florence-2 needs an image for every prompt: pass images=")
        single = isinstance(images, (PILImage.Image, np.ndarray, torch.Tensor)) or not hasattr(images, "__iter__")
        images = [images] if single else list(images)  # a list, tuple or `datasets` column of images
        texts = [""] * len(images) if text is None else [text] if isinstance(text, str) else list(text)
        if len(texts) != len(images):
            raise ValueError(f"Got {len(images)} images and {len(texts)} prompts: pass one prompt per image")
        for index, image in enumerate(images):
            check_image(image, index)
        rows = [self.encode_prompt(prompt) for prompt in texts]
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
        attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return BatchFeature({"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values},
                            tensor_type=return_tensors)

    # -- results -------------------------------------------------------------------------------------------------------
    def post_process_generation(self, text=None, sequence=None, task=None, image_size=None,
                                return_dropped: bool = False) -> dict:
        """`{task: result}` as Transformers' (floats at bin centres); with `return_dropped`, the result also holds
        `"dropped"`: location runs that formed no whole object."""
        if task not in self.tasks_answer_post_processing_type:
            raise ValueError(f"Unknown task {task!r}: Florence-2 tasks are {', '.join(self.tasks)}")
        if image_size is None or len(image_size) != 2 or min(image_size) <= 0:
            raise ValueError(f"image_size must be the image's (width, height) in pixels, got {image_size!r}")
        if text is None:
            if sequence is None:
                raise ValueError("post_process_generation needs the generated text or sequence (ids)")
            sequence = sequence.tolist() if isinstance(sequence, torch.Tensor) else list(sequence)
            text, _ = self.post_processor.decode_with_spans(sequence)
        text = self.post_processor.strip_special(text)
        result = super().post_process_generation(text=text, task=task, image_size=image_size)
        if return_dropped:
            kind = self.tasks_answer_post_processing_type[task]
            answer = result[task] if isinstance(result[task], dict) else {"text": result[task]}
            result[task] = dict(answer, dropped=count_partial_objects(text, kind))
        return result

    @staticmethod
    def to_detection_results(parsed: dict) -> list[dict]:
        """A `<OD>` / `<OPEN_VOCABULARY_DETECTION>` / grounding result (`{"bboxes", "labels"}` or
        `{"bboxes", "bboxes_labels"}`) -> the object-detection pipeline's `[{"score", "label", "box": {"xmin",
        "ymin", "xmax", "ymax"}}]`. Generated boxes have no confidence: the score is 1.0."""
        labels = parsed.get("labels", parsed.get("bboxes_labels", []))
        scores = parsed.get("scores", [1.0] * len(labels))
        return [
            {"score": float(score), "label": label,
             "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (float(v) for v in box)))}
            for box, label, score in zip(parsed["bboxes"], labels, scores)
        ]

    @staticmethod
    def to_coco_results(parsed: dict, image_id: int, label2id: dict[str, int]) -> list[dict]:
        """COCO detection results `[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]` of a detection
        result; labels outside `label2id` (free-form text the model wrote) are skipped."""
        results = []
        for detection in FlorenceGenerationProcessor.to_detection_results(parsed):
            if detection["label"] not in label2id:
                continue
            box = detection["box"]
            results.append({
                "image_id": image_id, "category_id": label2id[detection["label"]], "score": detection["score"],
                "bbox": [box["xmin"], box["ymin"], box["xmax"] - box["xmin"], box["ymax"] - box["ymin"]],
            })
        return results


@functools.lru_cache(maxsize=8)
def _literal_pattern(literals: tuple[str, ...]):
    return re.compile("|".join(re.escape(t) for t in literals)) if literals else None


def check_image(image, index: int = 0) -> None:
    """An image with no pixels is a `ValueError` naming it (PIL image, array or tensor)."""
    if hasattr(image, "size") and isinstance(image.size, tuple) and not hasattr(image, "shape"):
        empty = 0 in image.size  # PIL: (width, height)
    elif hasattr(image, "shape"):
        empty = 0 in tuple(image.shape)
    else:
        return
    if empty:
        raise ValueError(f"Image {index} has no pixels (size {getattr(image, 'shape', None) or image.size}): pass an "
                         "image with a non-zero width and height")


__all__ = [
    "DEFAULT_POST_PROCESSOR_CONFIG",
    "FlorenceGenerationPostProcessor",
    "FlorenceGenerationProcessor",
    "FlorenceGenerationTokenizer",
    "count_partial_objects",
    "dequantize",
    "location_text",
    "quantize",
]
