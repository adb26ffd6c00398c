# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""VQA processing: answer normalisation, the answer vocabulary, soft scores, `FlorenceVQAProcessor` and
`post_process_vqa`.

Answers are normalised as the official VQA evaluation does before counting votes: lower case, punctuation removed
(a period between digits and a comma inside a number are kept), number words to digits, articles dropped and common
apostrophe-less contractions restored. The soft score of an answer is `min(1, 0.3 * votes)` among the annotators
(1 vote 0.3, 2 votes 0.6, 3 votes 0.9, 4+ votes 1.0): the BCE target of METER's VQA head.
"""

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from .image_processing_florence import source_normalization
from .processing_florence import FlorenceProcessor

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = {"a", "an", "the"}
# The official evaluation's contraction table, for the forms written without an apostrophe (a subset of its list).
CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hes": "he's", "im": "i'm",
    "isnt": "isn't", "itll": "it'll", "ive": "i've", "shouldnt": "shouldn't", "thats": "that's",
    "theres": "there's", "theyre": "they're", "wasnt": "wasn't", "werent": "weren't", "whats": "what's",
    "wont": "won't", "wouldnt": "wouldn't", "youre": "you're",
}
_PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:']")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_NUMBER_COMMA = re.compile(r"(\d)(,)(\d)")


def normalize_answer(answer: str) -> str:
    """The VQA evaluation's answer normalisation ("Two dogs." -> "2 dogs", "the red one" -> "red 1")."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _NUMBER_COMMA.sub(r"\1\3", text)  # "1,000" -> "1000"
    text = _PUNCTUATION.sub(lambda match: "" if match.group(0) == "'" else " ", text)
    text = _PERIOD.sub("", text)
    words = []
    for word in text.split():
        word = NUMBER_WORDS.get(word, word)
        if word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def score_from_votes(votes: int) -> float:
    """Soft score of an answer given by `votes` annotators: min(1, 0.3 * votes)."""
    return min(1.0, 0.3 * votes)


def build_answer_vocabulary(answer_lists: Iterable[Sequence[str]], top_n: int | None = None,
                            min_count: int = 1) -> list[str]:
    """The answer vocabulary of a training set: normalised annotator answers by frequency (ties alphabetical), the
    `top_n` most frequent with at least `min_count` votes (METER/ViLT keep the 3,129 answers seen 9+ times)."""
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be a positive integer or None, got {top_n}")
    counts = Counter(normalize_answer(answer_text(a)) for answers in answer_lists for a in answers)
    counts.pop("", None)
    ranked = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda item: (-item[1], item[0]))
    return [answer for answer, _ in ranked[:top_n]]


def answer_text(answer) -> str:
    """One annotator answer as a string: a string, or a VQAv2 annotation dict (`{"answer": ..., ...}`)."""
    if isinstance(answer, dict) and isinstance(answer.get("answer"), str):
        return answer["answer"]
    if not isinstance(answer, str):
        raise ValueError(f"Each annotator answer must be a string (or a VQAv2 dict with an 'answer' string), got "
                         f"{answer!r}: drop or fill missing answers before building labels")
    return answer


def soft_scores(answers: Sequence[str], label2id: dict[str, int], num_labels: int) -> tuple[torch.Tensor, int]:
    """`(num_labels,)` soft scores of one question's annotator answers, and how many answers were outside the
    vocabulary (dropped: they score nothing)."""
    if answers is None or isinstance(answers, (str, dict)):
        raise ValueError(f"A question's answers must be a list of annotator answers, got {answers!r}")
    scores = torch.zeros(num_labels)
    votes = Counter(normalize_answer(answer_text(a)) for a in answers)
    dropped = 0
    for answer, count in votes.items():
        index = label2id.get(answer)
        if index is None:
            dropped += count
        else:
            scores[index] = score_from_votes(count)
    return scores, dropped


def post_process_vqa(outputs, id2label: dict[int, str], top_k: int = 1) -> list[list[dict]]:
    """`[{"answer", "score"}, ...]` (the `top_k` answers by sigmoid score, best first) for every question of a batch
    of `FlorenceForVQA` outputs (or a `(B, num_labels)` logits tensor)."""
    logits = outputs if isinstance(outputs, torch.Tensor) else outputs["logits"]
    if top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    missing = [index for index in range(logits.shape[-1]) if index not in id2label]
    if missing:
        raise ValueError(f"The model scores {logits.shape[-1]} answers but the answer vocabulary (id2label) has no "
                         f"entry for {len(missing)} of them (e.g. id {missing[0]}); use the vocabulary the model was "
                         "trained with (its config's id2label)")
    probabilities = logits.detach().float().sigmoid()
    values, indices = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
    return [
        [{"answer": id2label[int(index)], "score": float(value)} for value, index in zip(row_values, row_indices)]
        for row_values, row_indices in zip(values, indices)
    ]


def as_image_list(images) -> list:
    """One image (path, PIL image, `(C, H, W)` / `(H, W, C)` array) -> `[image]`; a batch (list, `datasets`
    column, `(B, ...)` array) -> a list of its images."""
    if isinstance(images, (str, bytes)) or not hasattr(images, "__len__") or getattr(images, "ndim", 4) == 3:
        return [images]
    if hasattr(images, "ndim") and images.ndim != 4:
        raise ValueError(f"images as an array must be (C, H, W) or (B, C, H, W), got shape {tuple(images.shape)}")
    return list(images)


class FlorenceVQAProcessor(FlorenceProcessor):
    """`FlorenceProcessor` for VQA: images + questions -> `pixel_values`, `input_ids`, `attention_mask`, and with
    `answers` (one list of annotator answers per question) `labels` = soft scores over `answer_vocabulary`.

    Answers outside the vocabulary are dropped and counted in `answer_counts` ({"kept", "dropped"}, over the
    processor's life), not an error: a training set always has a long tail of rare answers."""

    def __init__(self, image_processor=None, tokenizer=None, video_processor=None,
                 answer_vocabulary: list[str] | None = None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor, **kwargs)
        self.answer_vocabulary = list(answer_vocabulary) if answer_vocabulary is not None else None
        self.answer_counts = {"kept": 0, "dropped": 0}

    @classmethod
    def from_defaults(cls, image_size: int = 224, num_frames: int = 8, answer_vocabulary: list[str] | None = None,
                      source=None, **image_kwargs) -> "FlorenceVQAProcessor":
        """The shipped tokenizer and CLIP-style image settings. `source`: the folder the model's towers came from
        (`FlorenceForVQA.from_florence`): its saved normalisation is used (a Florence-2 folder's ImageNet mean/std;
        see `source_normalization`), unless `image_kwargs` set one."""
        if not {"normalization", "image_mean", "image_std"} & set(image_kwargs):
            image_kwargs.update(source_normalization(source))
        base = FlorenceProcessor.from_defaults(image_size=image_size, num_frames=num_frames, **image_kwargs)
        return cls(base.image_processor, base.tokenizer, base.video_processor, answer_vocabulary=answer_vocabulary)

    @property
    def label2id(self) -> dict[str, int]:
        if not self.answer_vocabulary:
            raise ValueError("This processor has no answer_vocabulary: build one with build_answer_vocabulary()")
        return {answer: index for index, answer in enumerate(self.answer_vocabulary)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.answer_vocabulary or []))

    def __call__(self, text=None, images=None, videos=None, answers=None, return_labels: bool = False,
                 allow_urls: bool = False, **kwargs):
        """`text` = questions, `images` = one image per question, `answers` = one list of annotator answers per
        question (optional). A batch of questions without images (or the reverse) is refused: VQA needs pairs."""
        if text is None and images is None and videos is None:
            raise ValueError("FlorenceVQAProcessor needs questions (text) and their images")
        if text is not None:
            questions = [text] if isinstance(text, str) else list(text)
            if images is None and videos is None:
                raise ValueError(f"Got {len(questions)} question(s) but no images: every question needs its image")
            empty = [index for index, question in enumerate(questions) if isinstance(question, str) and not question.strip()]
            if empty:
                raise ValueError(f"Question(s) {empty} are empty: every question needs some text")
            if images is not None:
                images = as_image_list(images)
                count = len(images)
                if count != len(questions):
                    raise ValueError(f"Got {count} images but {len(questions)} questions: pass one image per question")
        elif answers is not None:
            raise ValueError("answers were given without their questions (text)")
        outputs = super().__call__(text=text, images=images, videos=videos, return_labels=return_labels,
                                   allow_urls=allow_urls, **kwargs)
        if answers is not None:
            if isinstance(answers, str) or len(answers) != len(questions):
                raise ValueError(
                    f"answers must hold one list of annotator answers per question: got {len(questions)} questions "
                    f"and {1 if isinstance(answers, str) else len(answers)} answer lists"
                )
            outputs["labels"] = self.soft_labels(answers)
        return outputs

    def soft_labels(self, answers: Sequence[Sequence[str]]) -> torch.Tensor:
        """`(B, num_labels)` soft VQA scores of every question's annotator answers."""
        label2id = self.label2id
        rows = []
        for annotator_answers in answers:
            if isinstance(annotator_answers, str):
                raise ValueError(f"Each question's answers must be a list of strings, got the string {annotator_answers!r}")
            scores, dropped = soft_scores(annotator_answers, label2id, len(label2id))
            self.answer_counts["dropped"] += dropped
            self.answer_counts["kept"] += len(annotator_answers) - dropped
            rows.append(scores)
        return torch.stack(rows)

    def post_process_vqa(self, outputs, top_k: int = 1) -> list[list[dict]]:
        """`[{"answer", "score"}, ...]` per question, best first (see the module function)."""
        return post_process_vqa(outputs, self.id2label, top_k=top_k)


__all__ = [
    "FlorenceVQAProcessor",
    "build_answer_vocabulary",
    "mask_tokens",
    "normalize_answer",
    "post_process_vqa",
    "soft_scores",
    "score_from_votes",
]


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, mask_token_id: int, vocab_size: int,
                special_ids: Iterable[int] = (), probability: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's MLM corruption: each real, non-special token is chosen with `probability`; of those 80% become
    `mask_token_id`, 10% a random token, 10% stay. Returns `(masked input_ids, mlm_labels)` with the original ids at
    the chosen positions and -100 elsewhere (the inputs of `FlorenceForVisionLanguagePretraining`)."""
    if mask_token_id is None:
        raise ValueError("mask_token_id is required for MLM masking (the CLIP vocabulary has none: set "
                         "config.mask_token_id to an id the texts do not use)")
    if not 0 < probability < 1:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    candidates = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        candidates &= attention_mask.bool()
    for special in special_ids:
        candidates &= input_ids != special
    draw = torch.rand(input_ids.shape, generator=generator)
    chosen = candidates & (draw < probability)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, labels
