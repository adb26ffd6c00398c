# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""UniCL pretraining of a Florence two-tower model with Accelerate (one CPU, one GPU, or `accelerate launch`).

The schedule comes from a recipe file (`configuration/recipe-unicl-*.json`): Florence's stage 1 with prompt-template
augmentation of short labels, stage 2 without it, and an optional higher-resolution stage. Every recipe field is
type- and range-checked when the recipe is built (`Recipe.__post_init__`), so a typo fails before any work.

Batches come from a `torch.utils.data.DataLoader` per stage (worker processes, pinned memory on GPU, prefetch),
prepared by Accelerate with `split_batches`: the batch sampler yields the keys of the *global* batch of each micro
step, a pure function of (seed, step), and each process keeps its slice. A run resumed from a checkpoint therefore
sees exactly the batches the uninterrupted run would have seen, whatever the number of workers or processes.
Checkpoints are written to a temporary folder and renamed into place, so a crash never leaves a broken `latest`.

    florence-pretrain --recipe configuration/recipe-unicl-tiny.json --output outputs/florence-tiny-shapes
"""

import argparse
import csv
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from datasets import IterableDataset
from transformers import get_cosine_schedule_with_warmup

from .model_card import write_model_card
from .evaluation_florence import format_table, image_text_retrieval, zero_shot_classification
from .training_florence import bf16_on_this_cpu, fused_adamw, process_threads  # noqa: F401  (old import paths kept)
from .training_florence import reuse_freed_memory
from .modeling_florence import FlorenceModel
from .processing_florence import FlorenceProcessor, text_labels
from .recipe_florence import DATA_LOADERS, MIXED_PRECISION, Recipe, ShapesData, Stage, check_data

__all__ = ["PretrainingData", "Recipe", "Stage", "load_training_data", "train"]


def load_training_data(data: dict, image_size: int):
    """The image-text pairs (with `is_label`) and held-out evaluation sets named by the recipe's `data` block."""
    check_data(data)
    data = dict(data)
    source = data.pop("source", "shapes")
    if source == "shapes":
        from .shapes import build_classification, build_pairs

        options = vars(ShapesData(**data))
        options.pop("source")
        classification_test = options.pop("num_classification_test")
        pairs = build_pairs(image_size=image_size, **options)
        classification = build_classification(num_train=0, num_validation=0, num_test=classification_test,
                                              image_size=image_size, seed=1)
        return pairs["train"], pairs["test"], classification["test"]
    loader = DATA_LOADERS[source]
    return (loader(**data) if source == "imagefolder" else loader(source=source, **data)), None, None


def image_kwargs(image_size: int | None) -> dict:
    """Processor arguments that resize and crop to `image_size` (None: the processor's own size)."""
    return {} if image_size is None else {
        "size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}


def template_draws(seed: int, micro_step: int, batch_size: int, num_templates: int, use: bool) -> list[int]:
    """The prompt template of each row of a global batch (-1: none), drawn from (seed, micro step)."""
    if not use:
        return [-1] * batch_size
    return np.random.default_rng([seed, micro_step, 7]).integers(num_templates, size=batch_size).tolist()


class StepSampler:
    """Batch sampler yielding, for micro steps `start..stop-1`, the keys `(row, template, image_size)` of each global
    batch. Rows follow a permutation of the data per epoch seeded by (seed, epoch), so the keys of a step are a pure
    function of (seed, step); Accelerate's `split_batches` hands each process its slice."""

    def __init__(self, num_rows: int, recipe: Recipe, stage: Stage, start: int, stop: int, num_templates: int):
        self.batch_size, self.seed = recipe.batch_size, recipe.seed
        self.num_rows, self.stage, self.start, self.stop, self.num_templates = num_rows, stage, start, stop, num_templates
        self.per_epoch = num_rows // recipe.batch_size
        if self.per_epoch == 0:
            raise ValueError(f"{num_rows} training pairs cannot fill one batch of {recipe.batch_size}")

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        order, order_epoch = None, None
        for micro_step in range(self.start, self.stop):
            epoch, position = divmod(micro_step, self.per_epoch)
            if epoch != order_epoch:
                order, order_epoch = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows), epoch
            rows = order[position * self.batch_size : (position + 1) * self.batch_size].tolist()
            draws = template_draws(self.seed, micro_step, self.batch_size, self.num_templates,
                                   self.stage.prompt_templates)
            yield [(row, draw, self.stage.image_size) for row, draw in zip(rows, draws)]


class PairRows(torch.utils.data.Dataset):
    """An in-memory pair set read a batch at a time (`__getitems__`): rows for `UniCLCollator`.

    With `cache(image_size)` every image is preprocessed once and kept as a tensor (preprocessing is deterministic,
    so batches equal the uncached ones; 12 KiB per 32 px image). The cache is filled in the main process before the
    DataLoader starts its workers, which share it."""

    def __init__(self, pairs, processor):
        self.pairs, self.processor, self.pixels = pairs, processor, {}
        # plain lists: indexing a datasets column row by row costs ~0.15 ms a row
        self.texts = list(pairs["text"])
        self.is_label = list(pairs["is_label"]) if "is_label" in pairs.column_names else [False] * len(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def cache(self, image_size: int | None) -> None:
        if image_size not in self.pixels:  # one size at a time: stages move to larger images
            chunks = [self.processor(images=self.pairs[start : start + 1024]["image"], **image_kwargs(image_size))
                      ["pixel_values"] for start in range(0, len(self.pairs), 1024)]
            self.pixels = {image_size: torch.cat(chunks)}

    def __getitems__(self, keys: list[tuple]) -> list[dict]:
        rows = [row for row, _, _ in keys]
        image_size = keys[0][2]
        cached = self.pixels.get(image_size)
        images = cached[rows] if cached is not None else self.pairs[rows]["image"]
        return [{"text": self.texts[row], "is_label": self.is_label[row], "template": template,
                 "image_size": image_size, "pixel_values" if cached is not None else "image": image}
                for (row, template, image_size), image in zip(keys, images)]

    def __getitem__(self, key: tuple) -> dict:
        return self.__getitems__([key])[0]


class StreamRows(torch.utils.data.IterableDataset):
    """The rows of a streamed pair set (webdataset shards) in the order of the global batches of micro steps
    `start..stop-1`: epoch e reads the stream shuffled with seed (seed, e) through a buffer, and step k holds rows
    k*B..(k+1)*B-1 of the concatenated epochs, so a resumed run (which skips the rows already used) sees the
    uninterrupted run's batches. Every process reads the stream; Accelerate keeps each one's slice."""

    SHUFFLE_BUFFER = 1000

    def __init__(self, pairs, recipe: Recipe, stage: Stage, start: int, stop: int, num_templates: int):
        self.pairs, self.recipe, self.stage, self.start, self.stop = pairs, recipe, stage, start, stop
        self.num_templates = num_templates

    def stream(self):
        epoch = 0
        while True:
            empty = True
            for row in self.pairs.shuffle(seed=self.recipe.seed * 100003 + epoch, buffer_size=self.SHUFFLE_BUFFER):
                empty = False
                yield row
            if empty:
                raise ValueError("The streamed training data holds no rows")
            epoch += 1

    def __iter__(self):
        rows, size = self.stream(), self.recipe.batch_size
        for _ in range(self.start * size):  # resuming: skip the rows earlier steps used
            next(rows)
        for micro_step in range(self.start, self.stop):
            for draw in template_draws(self.recipe.seed, micro_step, size, self.num_templates,
                                       self.stage.prompt_templates):
                row = next(rows)
                yield {"text": row["text"], "is_label": bool(row.get("is_label")), "template": draw,
                       "image_size": self.stage.image_size, "image": row["image"]}


class UniCLCollator:
    """Rows -> model inputs: token ids of the (templated) prompts, UniCL labels of the texts *before* templating,
    and pixel values (stacked from the cache, or preprocessed here, in the worker).

    An image-label pair's label is its class, whichever template renders it, so two images of one class are
    positives even when their prompts differ. Each distinct prompt is tokenised once (captions and templated labels
    repeat across steps)."""

    CACHE_LIMIT = 200_000  # distinct prompts kept tokenised (large caption sets: the cache starts over)

    def __init__(self, processor, templates: list[str]):
        self.processor, self.templates, self.token_cache = processor, templates, {}

    def __call__(self, rows: list[dict]) -> dict:
        texts = [row["text"] for row in rows]
        prompts = [self.templates[row["template"]].format(row["text"]) if row["is_label"] and row["template"] >= 0
                   else row["text"] for row in rows]
        inputs = self.tokenize(prompts)
        inputs["labels"] = text_labels(texts)
        if "pixel_values" in rows[0]:
            inputs["pixel_values"] = torch.stack([row["pixel_values"] for row in rows])
        else:
            inputs["pixel_values"] = self.processor(images=[row["image"] for row in rows],
                                                    **image_kwargs(rows[0]["image_size"]))["pixel_values"]
        return inputs

    def prompts(self, texts: list[str], is_label: list[bool], prompt_templates: bool) -> set[str]:
        """Every prompt a stage can draw from these rows: each label in every template (or bare), each caption."""
        if not prompt_templates:
            return set(texts)
        labels = {text for text, label in zip(texts, is_label) if label}
        captions = {text for text, label in zip(texts, is_label) if not label}
        return captions | {template.format(label) for label in labels for template in self.templates}

    def prefill(self, prompts: set[str]) -> None:
        """Tokenise these prompts now, in this process: a `DataLoader` worker forked afterwards starts with them.
        Otherwise each worker (a new one every stage) would tokenise them batch by batch during its first epoch,
        taking CPU from the training step's threads: on 2 cores that epoch ran at half speed."""
        if len(prompts) <= self.CACHE_LIMIT:
            self.encode(prompts)

    def encode(self, prompts) -> None:
        missing = sorted(set(prompts) - self.token_cache.keys())
        if missing:
            if len(self.token_cache) + len(missing) > self.CACHE_LIMIT:
                self.token_cache.clear()
            encoded = self.processor(text=missing, padding=False, return_tensors=None)["input_ids"]
            self.token_cache.update(zip(missing, encoded))

    def tokenize(self, prompts: list[str]) -> dict:
        """The processor's padded `input_ids`/`attention_mask`, each distinct prompt tokenised once."""
        self.encode(prompts)
        rows = [self.token_cache[prompt] for prompt in prompts]
        input_ids = torch.full((len(rows), max(map(len, rows))), self.processor.tokenizer.pad_token_id)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


class PretrainingData:
    """One `DataLoader` per stage over the recipe's training pairs (in memory or streamed), in global-batch order."""

    def __init__(self, pairs, processor, recipe: Recipe, templates: list[str]):
        self.pairs, self.recipe, self.num_templates = pairs, recipe, len(templates)
        self.streaming = isinstance(pairs, IterableDataset)
        self.rows = None if self.streaming else PairRows(pairs, processor)
        self.collate = UniCLCollator(processor, templates)

    def loader(self, stage: Stage, start: int, stop: int) -> torch.utils.data.DataLoader:
        """Batches of micro steps `start..stop-1` of `stage` (global batches; `accelerator.prepare` slices them)."""
        # A stream is read by one worker at most: several would each read it all.
        workers = min(self.recipe.num_workers, 1) if self.streaming else self.recipe.num_workers
        options = {"collate_fn": self.collate, "num_workers": workers, "pin_memory": torch.cuda.is_available(),
                   "prefetch_factor": self.recipe.prefetch_factor if workers else None}
        if self.streaming:
            rows = StreamRows(self.pairs, self.recipe, stage, start, stop, self.num_templates)
            return torch.utils.data.DataLoader(rows, batch_size=self.recipe.batch_size, **options)
        if self.recipe.cache_images:
            self.rows.cache(stage.image_size)
        self.collate.prefill(self.collate.prompts(self.rows.texts, self.rows.is_label, stage.prompt_templates))
        sampler = StepSampler(len(self.rows), self.recipe, stage, start, stop, self.num_templates)
        return torch.utils.data.DataLoader(self.rows, batch_sampler=sampler, **options)


CHECKPOINT_NAME = re.compile(r"step-\d{7}(-r\d+)?")  # -rN: a step saved again after a resume


def latest_checkpoint(output: Path) -> Path | None:
    """The checkpoint that `checkpoints/latest` names, or None without one. The pointer may only name a
    `step-NNNNNNN` folder of this run's `checkpoints/` (no path, no `..`) that holds a complete checkpoint."""
    checkpoints = output / "checkpoints"
    pointer = checkpoints / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not CHECKPOINT_NAME.fullmatch(name):
        raise ValueError(f"{pointer} names {name!r}, not a checkpoint folder (step-NNNNNNN[-rN]) of {checkpoints}")
    if not (checkpoints / name / "trainer_state.json").is_file():
        raise ValueError(f"{pointer} names {name}, which is not a complete checkpoint in {checkpoints}")
    return checkpoints / name


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    """Keep the checkpoint `latest` names and the newest others, `keep` in all."""
    latest = latest_checkpoint(checkpoints.parent)
    others = sorted(path for path in checkpoints.glob("step-*") if path != latest)
    for old in others[: max(0, len(others) - (keep - (latest is not None)))]:
        shutil.rmtree(old)


def free_checkpoint_name(checkpoints: Path, step: int) -> Path:
    """`step-N`, or when a copy of step N is already on disk (a run resumed from an earlier checkpoint saves the
    step again) the first free `step-N-rK`: the new copy never overwrites the one `latest` may name."""
    final = checkpoints / f"step-{step:07d}"
    revision = 0
    while final.exists():
        revision += 1
        final = checkpoints / f"step-{step:07d}-r{revision}"
    return final


def save_checkpoint(accelerator: Accelerator, output: Path, step: int, history: list, keep: int) -> Path:
    """Write step N's checkpoint atomically: into a temporary folder, renamed to a free name (`step-N`, or `step-N-rK`
    when the step is saved again), then `latest` is pointed at it (an atomic rename), and only then are older copies
    of step N deleted and old checkpoints pruned. A crash at any point leaves `latest` naming a complete folder."""
    checkpoints = output / "checkpoints"
    temporary = checkpoints / f".tmp-step-{step:07d}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    final = free_checkpoint_name(checkpoints, step)
    if accelerator.is_main_process:
        (temporary / "trainer_state.json").write_text(json.dumps({"step": step, "history": history}))
        os.replace(temporary, final)
        pointer = checkpoints / ".latest.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, checkpoints / "latest")
        for older in checkpoints.glob(f"step-{step:07d}*"):
            if older != final:
                shutil.rmtree(older)
        prune_checkpoints(checkpoints, keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> None:
    """`accelerator.load_state`, with a checkpoint of a different model (other sizes or parameters) refused by a
    `ValueError` naming the checkpoint and the mismatch rather than the bare `load_state_dict` error."""
    try:
        accelerator.load_state(str(checkpoint))
    except (RuntimeError, KeyError) as error:
        mismatch = " ".join(line.strip() for line in str(error).splitlines()[:12])
        raise ValueError(
            f"Cannot resume from {checkpoint}: it was saved by a different model than this recipe builds "
            f"({mismatch}); resume with the recipe that wrote it, or start without --resume_from_checkpoint"
        ) from error


def resolve_checkpoint(output: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: None (start), `latest` (an error when there is none) or a folder."""
    if resume in (None, "", "none"):
        return None
    if resume == "latest":
        checkpoint = latest_checkpoint(output)
        if checkpoint is None:
            raise ValueError(f"--resume_from_checkpoint latest: {output / 'checkpoints'} holds no checkpoint")
        return checkpoint
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"{path} is not a checkpoint folder written by this trainer (no trainer_state.json)")
    return path


def resolve_mixed_precision(requested: str) -> tuple[str, str]:
    """The recipe's mixed precision and a line saying which runs: `bf16` on a CPU without bf16 units falls back to
    fp32 (emulated bf16 would be slower)."""
    on_cpu = not torch.cuda.is_available()
    if requested == "bf16" and on_cpu and not bf16_on_this_cpu():
        return "no", "Mixed precision: fp32 (bf16 asked, but this CPU has no native bf16)"
    native = " (this CPU computes bf16 natively)" if requested == "bf16" and on_cpu else ""
    return requested, f"Mixed precision: {'fp32' if requested == 'no' else requested}{native}"


def dataset_name(data: dict) -> str:
    """The data set a model card names: Florence Shapes, or the source's path."""
    source = data.get("source", "shapes")
    return "florence-shapes" if source == "shapes" else str(data.get("path", source))


def evaluate(model, processor, test_pairs, zero_shot_set, templates, limit: int = 1000) -> dict[str, float]:
    """Zero-shot top-1/top-5 on held-out single-object images, and R@K on held-out pairs with distinct captions."""
    model.eval()
    results = {}
    if zero_shot_set is not None:
        names = zero_shot_set.features["label"].names
        subset = zero_shot_set.select(range(min(limit, len(zero_shot_set))))
        scores = zero_shot_classification(model, processor, subset["image"], subset["label"], names, templates)
        results.update({f"zero_shot_{k}": v for k, v in scores.items()})
    if test_pairs is not None:
        first = {}
        for index, text in enumerate(test_pairs["text"]):
            first.setdefault(text, index)
        distinct = test_pairs.select(sorted(first.values())[:limit])
        results.update(image_text_retrieval(model, processor, distinct["image"], distinct["text"]))
        results["retrieval_pairs"] = float(len(distinct))
    model.train()
    return results


def plot_history(history: list[dict], path: Path) -> None:
    """Training curves and evaluation accuracy as a PNG (matplotlib is imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history if "loss" in h]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(steps, [h["loss"] for h in history if "loss" in h])
    axes[0].set(xlabel="step", ylabel="UniCL loss", title="training loss")
    evals = [h for h in history if "zero_shot_top1" in h or "i2t_R@5" in h]
    for key in ("zero_shot_top1", "i2t_R@5", "t2i_R@5"):
        if any(key in h for h in evals):
            axes[1].plot([h["step"] for h in evals if key in h], [h[key] for h in evals if key in h], marker="o", label=key)
    axes[1].set(xlabel="step", ylabel="%", title="held-out evaluation", ylim=(0, 100))
    if evals:
        axes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)



def _accelerator(recipe: Recipe, output: Path, log_with: str | None) -> Accelerator:
    """The run's Accelerator: mixed precision as the recipe asks (and this CPU allows), global batches split across
    processes, the schedule stepped once per optimizer step."""
    mixed_precision, precision_line = resolve_mixed_precision(recipe.mixed_precision)
    # Several processes on a machine without CUDA: Accelerate needs `cpu=True` to form a gloo process group.
    multi_process_cpu = int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_process_cpu,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        # The schedule counts global optimizer steps; it is stepped once per optimizer step below, whatever the
        # number of processes (Accelerate would otherwise step it once per process).
        step_scheduler_with_optimizer=False,
        mixed_precision=mixed_precision,
        # The batch sampler yields global batches; each process keeps its slice of every one.
        dataloader_config=DataLoaderConfiguration(split_batches=True, dispatch_batches=False,
                                                  non_blocking=torch.cuda.is_available()),
        log_with=_available_tracker(log_with),
        project_dir=str(output),
    )
    accelerator.print(precision_line)
    if recipe.batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size {recipe.batch_size} is not divisible by {accelerator.num_processes} processes")
    return accelerator


def _optimizer_and_schedule(model, recipe: Recipe):
    """Fused AdamW without decay on norms, biases, embeddings and the logit scale; cosine schedule with warm-up."""
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "embedding" in n or "logit_scale" in n)]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = fused_adamw(groups, lr=recipe.learning_rate)
    scheduler = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, recipe.total_steps)
    return optimizer, scheduler


def _save_run(model, processor, recipe: Recipe, output: Path, results: dict, history: list) -> None:
    """The pretrained folder: model, processor, results, card, metrics.csv and the training curves."""
    model.save_pretrained(output)
    processor.save_pretrained(output)
    (output / "eval_results.json").write_text(json.dumps(results, indent=2))
    write_model_card(output, results=results, datasets=[dataset_name(recipe.data)],
                     description="florence-tiny pretrained from scratch with UniCL on Florence Shapes by `make demo`.")
    _write_history(history, output / "metrics.csv")
    plot_history(history, output / "training_curves.png")
    print(format_table(results) if results else "No held-out evaluation sets for this data source")


def train(recipe: Recipe, output: str | Path, resume_from_checkpoint: str | None = None,
          stop_after_step: int | None = None, log_with: str | None = "tensorboard") -> dict:
    """Run the recipe; returns the final evaluation results."""
    began = time.perf_counter()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_checkpoint(output, resume_from_checkpoint)
    accelerator = _accelerator(recipe, output, log_with)
    set_seed(recipe.seed)
    config = recipe.model_config()
    model = FlorenceModel(config)
    if recipe.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    processor = FlorenceProcessor.from_defaults(image_size=config.vision_config.image_size)
    templates = recipe.template_list()
    train_pairs, test_pairs, zero_shot_set = load_training_data(recipe.data, config.vision_config.image_size)
    data = PretrainingData(train_pairs, processor, recipe, templates)

    optimizer, scheduler = _optimizer_and_schedule(model, recipe)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    step, history = 0, []
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint)
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        step, history = state["step"], state["history"]
        accelerator.print(f"Resumed from {checkpoint} at step {step}")
    accelerator.init_trackers("unicl", config={"recipe": recipe.model, "batch_size": recipe.batch_size})

    accumulation = recipe.gradient_accumulation_steps
    progress = _progress(accelerator, recipe.total_steps, step)
    started, seen = time.perf_counter(), 0
    model.train()
    for stage, _, end in recipe.stage_spans():
        if step >= end:
            continue
        loader = accelerator.prepare(data.loader(stage, step * accumulation, end * accumulation))
        for micro, inputs in enumerate(loader, start=1):
            with accelerator.accumulate(model):
                loss = model(**inputs, return_loss=True).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and recipe.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            seen += inputs["input_ids"].shape[0] * accelerator.num_processes
            if micro % accumulation:
                continue
            step += 1
            loss_value = accelerator.reduce(loss.detach().float(), reduction="mean").item()
            record = {"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0], "stage": stage.name}
            history.append(record)
            accelerator.log({k: v for k, v in record.items() if k != "stage"}, step=step)
            progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{record['lr']:.2e}",
                                 img_s=f"{seen / (time.perf_counter() - started):.0f}")
            progress.update(1)
            if recipe.eval_every and step % recipe.eval_every == 0 and step < recipe.total_steps:
                history.append({"step": step, "minutes": (time.perf_counter() - began) / 60,
                                **_evaluate_main(accelerator, model, processor, test_pairs, zero_shot_set, templates)})
            if recipe.checkpoint_every and step % recipe.checkpoint_every == 0:
                save_checkpoint(accelerator, output, step, history, recipe.keep_checkpoints)
            if stop_after_step is not None and step >= stop_after_step:
                accelerator.print(f"Stopping after step {step} as asked (simulated interruption)")
                loader.end()
                accelerator.end_training()
                return {}
    progress.close()

    results = _evaluate_main(accelerator, model, processor, test_pairs, zero_shot_set, templates)
    history.append({"step": step, "minutes": (time.perf_counter() - began) / 60, **results})
    if accelerator.is_main_process:
        _save_run(accelerator.unwrap_model(model), processor, recipe, output, results, history)
    accelerator.end_training()
    return results

def _evaluate_main(accelerator, model, processor, test_pairs, zero_shot_set, templates) -> dict:
    """Evaluate on the main process only (the held-out sets are small), then broadcast to keep processes in step."""
    results = [{}]
    if accelerator.is_main_process:
        results = [evaluate(accelerator.unwrap_model(model), processor, test_pairs, zero_shot_set, templates)]
    if accelerator.num_processes > 1:
        torch.distributed.broadcast_object_list(results, src=0)
    return results[0]


def _write_history(history: list[dict], path: Path) -> None:
    keys = sorted({k for h in history for k in h}, key=lambda k: (k != "step", k))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _available_tracker(name: str | None):
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
    return name


def _progress(accelerator, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not accelerator.is_local_main_process, desc="UniCL",
                mininterval=2.0)


def add_dry_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="build the model (meta device), the FSDP2 plan and one batch; print parameters, memory "
                             "per process and tokens per step; train nothing (--output is then not needed)")
    parser.add_argument("--model", default=None, help="with --dry-run: a preset overriding the recipe's model")
    parser.add_argument("--num_processes", type=int, default=None, help="with --dry-run: processes (default "
                                                                          "WORLD_SIZE or 1)")


def run_dry_run(args) -> dict:
    from .configuration_florence import load_preset
    from .sharding_florence import dry_run, print_dry_run

    recipe = Recipe.from_file(args.recipe, batch_size=args.batch_size,
                              gradient_checkpointing=args.gradient_checkpointing)
    config = recipe.model_config() if args.model is None else load_preset(args.model)
    processes = args.num_processes or int(os.environ.get("WORLD_SIZE", 1))
    figures = dry_run(config, recipe.batch_size, processes, bool(recipe.gradient_checkpointing))
    print_dry_run(figures)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipe-unicl-tiny.json", help="recipe JSON (a path or a shipped name)")
    parser.add_argument("--output", help="folder for checkpoints, logs, plots and the final model (required to train)")
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--mixed_precision", default=None, choices=MIXED_PRECISION)
    parser.add_argument("--gradient_checkpointing", action="store_true", default=None)
    parser.add_argument("--batch_size", type=int, default=None, help="global batch size (overrides the recipe)")
    parser.add_argument("--num_workers", type=int, default=None, help="DataLoader workers (overrides the recipe)")
    parser.add_argument("--stop_after_step", type=int, default=None, help="stop early (to test resuming)")
    parser.add_argument("--log_with", default="tensorboard", help="tensorboard, csv-only (none) or another tracker")
    add_dry_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.dry_run:
        return run_dry_run(args)
    if not args.output:
        parser.error("--output is required (except with --dry-run)")
    torch.set_num_threads(process_threads())
    reuse_freed_memory()
    recipe = Recipe.from_file(
        args.recipe, mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        batch_size=args.batch_size, num_workers=args.num_workers,
    )
    train(recipe, args.output, args.resume_from_checkpoint, args.stop_after_step,
          None if args.log_with == "none" else args.log_with)


if __name__ == "__main__":
    main()
