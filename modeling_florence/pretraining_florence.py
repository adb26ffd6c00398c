# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""UniCL pretraining of a Florence two-tower model with Accelerate (one CPU, one GPU, or `accelerate launch`).

The schedule comes from a recipe file (`configuration/recipe-unicl-*.json`): Florence's stage 1 with prompt-template
augmentation of short labels, stage 2 without it, and an optional higher-resolution stage. Data order is a pure
function of (seed, step), so a run resumed from a checkpoint sees exactly the batches the uninterrupted run would
have seen; checkpoints are written to a temporary folder and renamed into place, so a crash never leaves a broken
`latest`. The final model is saved with `save_pretrained` next to its processor.

    florence-pretrain --recipe configuration/recipe-unicl-tiny.json --output outputs/florence-tiny-shapes
"""

import argparse
import csv
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import IterableDataset
from transformers import get_cosine_schedule_with_warmup

from .configuration_florence import load_preset, presets_dir
from .evaluation_florence import format_table, image_text_retrieval, load_templates, zero_shot_classification
from .modeling_florence import FlorenceModel
from .processing_florence import FlorenceProcessor, text_labels

RECIPE_KEYS = {
    "model", "model_overrides", "data", "batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay",
    "warmup_steps", "max_grad_norm", "stages", "eval_every", "checkpoint_every", "templates", "seed",
    "mixed_precision", "gradient_checkpointing", "keep_checkpoints", "cache_images",
}
STAGE_KEYS = {"name", "steps", "prompt_templates", "image_size"}


@dataclass
class Stage:
    name: str
    steps: int
    prompt_templates: bool = True
    image_size: int | None = None


@dataclass
class Recipe:
    model: str = "florence-tiny"
    model_overrides: dict = field(default_factory=dict)
    data: dict = field(default_factory=lambda: {"source": "shapes"})
    batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    stages: list = field(default_factory=list)
    eval_every: int = 0
    checkpoint_every: int = 0
    templates: str | None = None
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    keep_checkpoints: int = 2
    cache_images: bool = False  # preprocess every training image once and keep the tensors (small data sets)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "Recipe":
        path = Path(path)
        if not path.is_file() and (presets_dir() / path.name).is_file():
            path = presets_dir() / path.name
        values = json.loads(path.read_text())
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - RECIPE_KEYS
        if unknown:
            raise ValueError(f"Unknown recipe keys {sorted(unknown)} in {path}; known keys: {sorted(RECIPE_KEYS)}")
        stages = []
        for stage in values.pop("stages", []):
            if set(stage) - STAGE_KEYS:
                raise ValueError(f"Unknown stage keys {sorted(set(stage) - STAGE_KEYS)}; known: {sorted(STAGE_KEYS)}")
            stages.append(Stage(**stage))
        if not stages or any(stage.steps < 0 for stage in stages):
            raise ValueError(f"{path} must list stages with non-negative step counts")
        return cls(stages=stages, **values)

    def model_config(self):
        """The config of the model this recipe trains: its preset with `model_overrides` merged in."""
        return load_preset(self.model, **self.model_overrides)

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    def stage_at(self, step: int) -> Stage:
        for stage in self.stages:
            if step < stage.steps:
                return stage
            step -= stage.steps
        return self.stages[-1]


def load_training_data(data: dict, image_size: int):
    """The image-text pairs (with `is_label`) and held-out evaluation sets named by the recipe's `data` block."""
    data = dict(data)
    source = data.pop("source", "shapes")
    if source == "shapes":
        from .shapes import build_classification, build_pairs

        options = {k: data.pop(k) for k in ("num_train", "num_validation", "num_test", "label_fraction",
                                            "detailed_fraction") if k in data}
        pairs = build_pairs(image_size=image_size, seed=data.pop("seed", 0), **options)
        classification = build_classification(
            num_train=0, num_validation=0, num_test=data.pop("num_classification_test", 600), image_size=image_size,
            seed=1,
        )
        if data:
            raise ValueError(f"Unknown Florence Shapes data keys {sorted(data)}; known: num_train, num_validation, "
                             "num_test, num_classification_test, label_fraction, detailed_fraction, seed")
        return pairs["train"], pairs["test"], classification["test"]
    if source == "imagefolder":
        from .data_florence import image_folder_pairs

        return image_folder_pairs(**data), None, None
    if source in ("jsonl", "csv", "webdataset"):
        from .data_florence import load_image_text_pairs

        return load_image_text_pairs(source=source, **data), None, None
    raise ValueError(f"Unknown data source {source!r}: use shapes, jsonl, csv, imagefolder or webdataset")


class BatchMaker:
    """Turns a global step into this process's slice of the global batch: deterministic, so resuming is exact.

    UniCL labels come from the text *before* prompt templating: an image-label pair's label is its class, whichever
    template renders it, so two images of one class are positives even when their prompts differ. With
    `cache_images`, every image is preprocessed once per image size and kept as a tensor (preprocessing is
    deterministic, so batches are identical to the uncached ones; this costs 48 KiB per 64x64 image)."""

    def __init__(self, dataset, processor, recipe: Recipe, templates: list[str], rank: int, world_size: int,
                 cache_images: bool = False):
        self.dataset, self.processor, self.recipe, self.templates = dataset, processor, recipe, templates
        self.rank, self.world_size = rank, world_size
        if recipe.batch_size % world_size:
            raise ValueError(f"batch_size {recipe.batch_size} is not divisible by {world_size} processes")
        self.per_process = recipe.batch_size // world_size
        self.cache_images = cache_images
        self.pixel_cache: dict[int | None, torch.Tensor] = {}
        self.token_cache: dict[str, list[int]] = {}
        if isinstance(dataset, IterableDataset):
            return
        self.per_epoch = len(dataset) // recipe.batch_size
        if self.per_epoch == 0:
            raise ValueError(f"{len(dataset)} training pairs cannot fill one batch of {recipe.batch_size}")
        # plain lists: indexing a datasets column row by row costs ~0.15 ms a row
        self.columns = {name: list(dataset[name]) for name in ("text", "is_label") if name in dataset.column_names}

    def this_process(self, values):
        return values[self.rank * self.per_process : (self.rank + 1) * self.per_process]

    def indices(self, micro_step: int) -> np.ndarray:
        epoch, position = divmod(micro_step, self.per_epoch)
        order = np.random.default_rng([self.recipe.seed, epoch]).permutation(len(self.dataset))
        return self.this_process(order[position * self.recipe.batch_size : (position + 1) * self.recipe.batch_size])

    @staticmethod
    def image_kwargs(image_size: int | None) -> dict:
        return {} if image_size is None else {
            "size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}

    def pixel_values(self, indices: list[int], image_size: int | None) -> torch.Tensor:
        kwargs = self.image_kwargs(image_size)
        if not self.cache_images:
            return self.processor(images=self.dataset[indices]["image"], **kwargs)["pixel_values"]
        if image_size not in self.pixel_cache:
            chunks = [self.processor(images=self.dataset[start : start + 1024]["image"], **kwargs)["pixel_values"]
                      for start in range(0, len(self.dataset), 1024)]
            self.pixel_cache = {image_size: torch.cat(chunks)}  # one size at a time: stages move to larger images
        return self.pixel_cache[image_size][indices]

    def text_inputs(self, texts: list[str], is_label: list[bool], micro_step: int, stage: Stage) -> dict:
        """Token ids of the (templated) prompts and UniCL labels of the texts before templating."""
        # Template draws for the whole global batch, then this process's slice: the same texts however many
        # processes share the batch.
        rng = np.random.default_rng([self.recipe.seed, micro_step, 7])
        choices = self.this_process(rng.integers(len(self.templates), size=self.recipe.batch_size))
        prompts = [
            self.templates[choice].format(text) if label and stage.prompt_templates else text
            for text, label, choice in zip(texts, is_label, choices)
        ]
        inputs = self.tokenize(prompts)
        inputs["labels"] = text_labels(texts)
        return inputs

    def tokenize(self, prompts: list[str]) -> dict:
        """The processor's padded `input_ids`/`attention_mask`, each distinct prompt tokenised once (captions and
        templated labels repeat across steps; tokenising is ~5% of a florence-tiny step)."""
        missing = sorted(set(prompts) - self.token_cache.keys())
        if missing:
            if len(self.token_cache) > 200_000:  # bounded for large caption sets
                self.token_cache.clear()
            encoded = self.processor(text=missing, padding=False, return_tensors=None)["input_ids"]
            self.token_cache.update(zip(missing, encoded))
        rows = [self.token_cache[prompt] for prompt in prompts]
        input_ids = torch.full((len(rows), max(map(len, rows))), self.processor.tokenizer.pad_token_id)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __call__(self, micro_step: int, stage: Stage) -> dict:
        indices = self.indices(micro_step).tolist()
        texts = [self.columns["text"][index] for index in indices]
        is_label = [self.columns["is_label"][index] for index in indices] if "is_label" in self.columns else [
            False] * len(indices)
        inputs = self.text_inputs(texts, is_label, micro_step, stage)
        inputs["pixel_values"] = self.pixel_values(indices, stage.image_size)
        return inputs


class StreamingBatchMaker(BatchMaker):
    """Batches read in order from a streamed data set (webdataset shards), never held in memory.

    Epoch e reads the stream shuffled with seed (seed, e) through a buffer; step k holds rows k*B..(k+1)*B-1 of the
    concatenated epochs, so a resumed run (which skips the rows already used) sees the uninterrupted run's batches.
    Every process reads the stream and keeps its slice of the global batch."""

    SHUFFLE_BUFFER = 1000

    def __init__(self, dataset, processor, recipe: Recipe, templates: list[str], rank: int, world_size: int):
        super().__init__(dataset, processor, recipe, templates, rank, world_size)
        self.rows, self.position = None, 0

    def stream(self):
        epoch = 0
        while True:
            empty = True
            for row in self.dataset.shuffle(seed=self.recipe.seed * 100003 + epoch, buffer_size=self.SHUFFLE_BUFFER):
                empty = False
                yield row
            if empty:
                raise ValueError("The streamed training data holds no rows")
            epoch += 1

    def __call__(self, micro_step: int, stage: Stage) -> dict:
        start = micro_step * self.recipe.batch_size
        if self.rows is None or start < self.position:
            self.rows, self.position = self.stream(), 0
        for _ in range(start - self.position):  # resuming: skip the rows earlier steps used
            next(self.rows)
        rows = self.this_process([next(self.rows) for _ in range(self.recipe.batch_size)])
        self.position = start + self.recipe.batch_size
        inputs = self.text_inputs([row["text"] for row in rows], [bool(row.get("is_label")) for row in rows],
                                  micro_step, stage)
        images = [row["image"] for row in rows]
        inputs["pixel_values"] = self.processor(images=images, **self.image_kwargs(stage.image_size))["pixel_values"]
        return inputs


def save_checkpoint(accelerator: Accelerator, output: Path, step: int, history: list, keep: int) -> Path:
    """Write `checkpoints/step-N` through a temporary folder and an atomic rename, then point `latest` at it."""
    checkpoints = output / "checkpoints"
    final = checkpoints / f"step-{step:07d}"
    temporary = checkpoints / f".tmp-step-{step:07d}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    if accelerator.is_main_process:
        (temporary / "trainer_state.json").write_text(json.dumps({"step": step, "history": history}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        pointer = checkpoints / ".latest.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, checkpoints / "latest")
        for old in sorted(checkpoints.glob("step-*"))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(output: Path, resume: str) -> Path | None:
    if resume in (None, "", "none"):
        return None
    if resume == "latest":
        pointer = output / "checkpoints" / "latest"
        return output / "checkpoints" / pointer.read_text().strip() if pointer.is_file() else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"{path} is not a checkpoint folder written by this trainer (no trainer_state.json)")
    return path


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


def train(recipe: Recipe, output: str | Path, resume_from_checkpoint: str | None = None,
          stop_after_step: int | None = None, log_with: str | None = "tensorboard") -> dict:
    """Run the recipe; returns the final evaluation results."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    # Several processes on a machine without CUDA: Accelerate needs `cpu=True` to form a gloo process group.
    multi_process_cpu = int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_process_cpu,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        # The schedule counts global optimizer steps; it is stepped once per optimizer step below, whatever the
        # number of processes (Accelerate would otherwise step it once per process).
        step_scheduler_with_optimizer=False,
        mixed_precision=recipe.mixed_precision,
        log_with=_available_tracker(log_with),
        project_dir=str(output),
    )
    set_seed(recipe.seed)
    config = recipe.model_config()
    image_size = config.vision_config.image_size
    model = FlorenceModel(config)
    if recipe.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    processor = FlorenceProcessor.from_defaults(image_size=image_size)
    templates = load_templates(recipe.templates and (presets_dir() / recipe.templates
                                                      if not Path(recipe.templates).is_file() else recipe.templates))
    train_pairs, test_pairs, zero_shot_set = load_training_data(recipe.data, image_size)

    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "embedding" in n or "logit_scale" in n)]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # the fused kernel updates the 49k-row token embedding ~1.5x faster than the per-tensor loop
        optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate, fused=True)
    except (RuntimeError, ValueError):
        optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate)
    scheduler = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, max(1, recipe.total_steps))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    if isinstance(train_pairs, IterableDataset):
        batches = StreamingBatchMaker(train_pairs, processor, recipe, templates, accelerator.process_index,
                                      accelerator.num_processes)
    else:
        batches = BatchMaker(train_pairs, processor, recipe, templates, accelerator.process_index,
                             accelerator.num_processes, cache_images=recipe.cache_images)
    step, history = 0, []
    checkpoint = resolve_checkpoint(output, resume_from_checkpoint)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        step, history = state["step"], state["history"]
        accelerator.print(f"Resumed from {checkpoint} at step {step}")
    accelerator.init_trackers("unicl", config={"recipe": recipe.model, "batch_size": recipe.batch_size})

    accumulation = recipe.gradient_accumulation_steps
    progress = _progress(accelerator, recipe.total_steps, step)
    started, seen = time.perf_counter(), 0
    model.train()
    while step < recipe.total_steps:
        stage = recipe.stage_at(step)
        for micro in range(accumulation):
            inputs = batches(step * accumulation + micro, stage)
            inputs = {k: v.to(accelerator.device) for k, v in inputs.items()}
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
        step += 1
        loss_value = accelerator.reduce(loss.detach(), reduction="mean").item()
        record = {"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0], "stage": stage.name}
        history.append(record)
        accelerator.log({k: v for k, v in record.items() if k != "stage"}, step=step)
        images_per_second = seen / (time.perf_counter() - started)
        progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{record['lr']:.2e}", img_s=f"{images_per_second:.0f}")
        progress.update(1)
        if recipe.eval_every and step % recipe.eval_every == 0 and step < recipe.total_steps:
            history.append({"step": step, **_evaluate_main(accelerator, model, processor, test_pairs, zero_shot_set,
                                                          templates)})
        if recipe.checkpoint_every and step % recipe.checkpoint_every == 0:
            save_checkpoint(accelerator, output, step, history, recipe.keep_checkpoints)
        if stop_after_step is not None and step >= stop_after_step:
            accelerator.print(f"Stopping after step {step} as asked (simulated interruption)")
            accelerator.end_training()
            return {}
    progress.close()

    results = _evaluate_main(accelerator, model, processor, test_pairs, zero_shot_set, templates)
    history.append({"step": step, **results})
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(output)
        processor.save_pretrained(output)
        (output / "eval_results.json").write_text(json.dumps(results, indent=2))
        _write_history(history, output / "metrics.csv")
        plot_history(history, output / "training_curves.png")
        print(format_table(results) if results else "No held-out evaluation sets for this data source")
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipe-unicl-tiny.json", help="recipe JSON (a path or a shipped name)")
    parser.add_argument("--output", required=True, help="folder for checkpoints, logs, plots and the final model")
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient_checkpointing", action="store_true", default=None)
    parser.add_argument("--batch_size", type=int, default=None, help="global batch size (overrides the recipe)")
    parser.add_argument("--stop_after_step", type=int, default=None, help="stop early (to test resuming)")
    parser.add_argument("--log_with", default="tensorboard", help="tensorboard, csv-only (none) or another tracker")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", 1))))
    recipe = Recipe.from_file(
        args.recipe, mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        batch_size=args.batch_size,
    )
    train(recipe, args.output, args.resume_from_checkpoint, args.stop_after_step,
          None if args.log_with == "none" else args.log_with)


if __name__ == "__main__":
    main()
