# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Florence-2 fine-tuning pieces for `FlorenceForConditionalGeneration` with Transformers' `Seq2SeqTrainer` (used by
`examples/finetune_generation.py`): data, the model on a pretrained CoSwin tower, the collator, and `compute_metrics`
scoring generated text with each task's metric (`evaluation_florence_generation.score_generation`).

- **Data.** Rows of (image, task prompt, target text): Florence Shapes (`shapes.build_florence2`), a COCO detection
  json (`<OD>` rows) or a jsonl of (image, prompt, answer) (`data_florence`).
- **Labels.** `bos + target + eos` ids, padded with -100 (the loss ignores padding); prompts padded on the right with
  their attention mask (`FlorenceGenerationProcessor`); the decoder input is Transformers' shift of the labels.
  Location tokens in a target are the special tokens; a target longer than the decoder can write is an error naming
  the row, never truncated.
- **A model trained here** (`build_generation_model`): the CoSwin tower of a two-tower Florence, copied; the
  projector and the BART encoder-decoder from their init, except the tied token table: the CLIP BPE rows take the
  two-tower text tower's token embeddings when the widths match (the words the tower was pretrained on), and the 1,000
  location rows take sinusoids of the bin index, so neighbouring bins start close and the tied LM head scores them
  alike (a box corner one bin off is nearly as likely as the right one from the first step, as it should be).
- **Evaluation** generates with the trainer (`predict_with_generate`), parses every row with the processor's
  `post_process_generation` for its task, and scores each task with the metric the Florence-2 paper reports: COCO mAP
  of generated boxes (`<OD>`), accuracy at IoU >= 0.5 (grounding), polygon mIoU (referring segmentation), exact
  match and CIDEr (captions), accuracy (region to category) and VQA accuracy and ANLS (`<VQA>`: a bare question).
"""

import math
from collections import defaultdict

import numpy as np
import torch

from .evaluation_florence_generation import CAPTION_TASKS, score_generation
from .modeling_florence_generation import FlorenceForConditionalGeneration
from .processing_florence_generation import LOCATION_TOKENS
from .training_florence import require_columns

# The prompt a row's parse uses for its task ("<VQA>" rows are bare questions: their answers are plain text).
PARSE_TASK = {"<VQA>": "<CAPTION>"}
# The tiny encoder-decoder of `make demo-generation` (d_model = florence-tiny's text width, so the CLIP token table
# of the pretrained text tower initialises the word rows). init_std = d_model ** -0.5, not BART's 0.02 (sized for
# d_model 1024): at 0.02 a 128-wide layer has a gain of ~0.23, the cross-attention's value path ~0.05, and the decoder
# trained as an unconditional language model, ignoring its prompt and image for hundreds of steps.
TINY_TEXT_CONFIG = dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                        max_position_embeddings=256, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        scale_embedding=False, init_std=128 ** -0.5)


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------
def generation_data(data: str, num_train: int, num_test: int, image_size: int = 96, seed: int = 0, tasks=None,
                    annotations=None, images=None, jsonl=None, test_fraction: float = 0.1):
    """(train, test) rows with `image`, `task`, `prompt`, `target` (and `answers`): Florence Shapes multi-task, a COCO
    detection json (`annotations` + `images`: `<OD>` rows) or a jsonl of (image, prompt, answer) split at random."""
    if data == "shapes":
        from .shapes import FLORENCE2_TASKS, build_florence2

        splits = build_florence2(num_train=num_train, num_validation=0, num_test=num_test, image_size=image_size,
                                 seed=seed, tasks=tuple(tasks or FLORENCE2_TASKS))
        return splits["train"], splits["test"]
    from .data_florence import load_coco_generation, load_generation_jsonl

    if data == "coco":
        if not (annotations and images):
            raise ValueError("--data coco needs --annotations (a COCO detection json) and --images (its folder)")
        rows = load_coco_generation(annotations, images)
    elif data == "jsonl":
        if not jsonl:
            raise ValueError("--data jsonl needs --jsonl (lines of {\"image\", \"prompt\", \"answer\"})")
        rows = load_generation_jsonl(jsonl, images)
    else:
        raise ValueError(f"data must be 'shapes', 'coco' or 'jsonl', got {data!r}")
    halves = rows.train_test_split(test_size=min(num_test, len(rows) - 1) if num_test else test_fraction, seed=seed)
    return halves["train"], halves["test"]


def target_ids(tokenizer, text: str, limit: int, row: int | None = None) -> list[int]:
    """`bos + text + eos` ids (location and markup strings are their tokens); an error when over `limit`."""
    ids = [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    if len(ids) > limit:
        where = f"row {row}: " if row is not None else ""
        raise ValueError(f"{where}the target is {len(ids)} tokens but the decoder writes at most {limit} "
                         f"(text_config.max_position_embeddings): shorten it or build the model with more positions")
    return ids


class GenerationCollator:
    """Rows (`image`, `prompt`, `target`) -> the processor's `pixel_values`, `input_ids`, `attention_mask` and
    `labels` (`bos + target + eos`, padded with -100)."""

    def __init__(self, processor, max_target_length: int):
        self.processor = processor
        self.max_target_length = max_target_length

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.processor(images=[row["image"] for row in rows], text=[row["prompt"] for row in rows])
        targets = [target_ids(self.processor.tokenizer, row["target"], self.max_target_length) for row in rows]
        width = max(len(ids) for ids in targets)
        batch["labels"] = torch.tensor([ids + [-100] * (width - len(ids)) for ids in targets])
        return dict(batch)


# ----------------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------------
def location_embeddings(num_bins: int, width: int, std: float) -> torch.Tensor:
    """`(num_bins, width)` sinusoids of the bin index (periods 8 to 4 x num_bins bins, geometric), scaled to `std` per
    element: neighbouring bins close, distant ones apart."""
    half = width // 2
    periods = 8.0 * (4 * num_bins / 8.0) ** (torch.arange(half, dtype=torch.float64) / max(half - 1, 1))
    angles = torch.arange(num_bins, dtype=torch.float64)[:, None] * (2 * math.pi / periods)
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    table = torch.cat([table, torch.zeros(num_bins, width - 2 * half, dtype=torch.float64)], dim=1)
    return (table * std * math.sqrt(2)).float()


def init_token_embeddings_(model: FlorenceForConditionalGeneration, tokenizer, word_embeddings=None) -> None:
    """The tied token table of a new language model: `word_embeddings` (e.g. the CLIP token table of the two-tower's
    text tower, same width) in the first rows, sinusoids of the bin in the location rows."""
    table = model.get_input_embeddings().weight
    std = float(model.config.text_config.init_std)
    with torch.no_grad():
        if word_embeddings is not None and word_embeddings.shape[1] == table.shape[1]:
            rows = min(len(word_embeddings), len(table))
            table[:rows] = word_embeddings[:rows] * (std / float(word_embeddings[:rows].std()))
        location_ids = tokenizer.convert_tokens_to_ids(LOCATION_TOKENS)
        table[location_ids] = location_embeddings(len(location_ids), table.shape[1], std).to(table.dtype)


def build_generation_model(base: str, tokenizer, text_config: dict | None = None, vision_feature_stages=None,
                           freeze_vision_tower: bool = True) -> FlorenceForConditionalGeneration:
    """`FlorenceForConditionalGeneration` on the CoSwin tower of the two-tower folder `base` (copied), a new
    encoder-decoder of `text_config` (default `TINY_TEXT_CONFIG`) over `tokenizer`'s vocabulary, its token table
    initialised by `init_token_embeddings_`; the tower frozen unless `freeze_vision_tower=False`."""
    from .modeling_florence import FlorenceModel

    text = dict(text_config or TINY_TEXT_CONFIG, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id)
    two_tower = FlorenceModel.from_pretrained(base)
    model = FlorenceForConditionalGeneration.from_florence(two_tower, text_config=text,
                                                           image_token_id=tokenizer.image_token_id,
                                                           vision_feature_stages=vision_feature_stages)
    init_token_embeddings_(model, tokenizer, two_tower.text_model.get_input_embeddings().weight.detach())
    model.generation_config.forced_eos_token_id = None
    if freeze_vision_tower:
        model.model.vision_tower.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------
def parse_generated(processor, ids, task: str, image_size: tuple[int, int]):
    """A row's parsed result: the processor's `post_process_generation` value for its task (text for `<VQA>`)."""
    ids = [int(i) for i in ids if int(i) >= 0]
    task = PARSE_TASK.get(task, task)
    return processor.post_process_generation(sequence=ids, task=task, image_size=image_size)[task]


def task_key(task: str) -> str:
    """`<CAPTION_TO_PHRASE_GROUNDING>` -> `caption_to_phrase_grounding` (metric name prefixes)."""
    return task.strip("<>").lower()


# Tasks scored against reference answers (the `answers` column) rather than parsed targets.
TEXT_TASKS = (*CAPTION_TASKS, "<VQA>")


def score_rows(dataset, predictions: list, processor, categories=None) -> dict[str, float]:
    """`{task_metric: value}` over rows of `dataset` (`task`, `target`, `width`, `height`, optional `answers`) and
    their parsed `predictions`, with each task's metrics (`score_generation`). References: the `answers` of text
    tasks (else the target), the targets parsed by `processor` for boxes and polygons."""
    require_columns(dataset, ("task", "target", "width", "height"), "generation evaluation")
    by_task = defaultdict(list)
    for index, task in enumerate(dataset["task"]):
        by_task[task].append(index)
    metrics = {}
    for task, indices in sorted(by_task.items()):
        rows = dataset.select(indices)
        sizes = list(zip(rows["width"], rows["height"]))
        answers = rows["answers"] if "answers" in rows.column_names else [[]] * len(rows)
        if task in TEXT_TASKS:
            references = [list(a) or [t] for a, t in zip(answers, rows["target"])]
        else:
            references = [processor.post_process_generation(text=t, task=task, image_size=size)[task]
                          for t, size in zip(rows["target"], sizes)]
        scores = score_generation(task, [predictions[i] for i in indices], references, image_sizes=sizes,
                                  categories=categories)
        metrics.update({f"{task_key(task)}_{name}": float(value) for name, value in scores.items()})
    return metrics


def make_compute_metrics(dataset, processor, categories=None):
    """`compute_metrics` for `Seq2SeqTrainer(predict_with_generate=True)` on `dataset` (evaluated in order): every
    generated sequence parsed for its row's task, then `score_rows`."""
    sizes = list(zip(dataset["width"], dataset["height"]))
    tasks = dataset["task"]

    def compute_metrics(eval_prediction) -> dict[str, float]:
        sequences = eval_prediction.predictions
        sequences = sequences[0] if isinstance(sequences, tuple) else sequences
        parsed = [parse_generated(processor, np.asarray(ids), task, size)
                  for ids, task, size in zip(sequences, tasks, sizes)]
        return score_rows(dataset, parsed, processor, categories)

    return compute_metrics
