"""Images/s of UniCL pretraining: data loading, the training step (fp32 vs bf16, ours vs a dual encoder), a step
profile, and the demo recipe's time to accuracy.

In one process on the same batches:
  1. data loading through the trainer's `DataLoader` on Florence Shapes (PNG decode + resize/normalise + tokenise +
     UniCL labels) with 0, 1 and 2 worker processes, and with the recipe's `cache_images`;
  2. one full optimizer step (forward, UniCL loss, backward, gradient clipping, fused AdamW) of `florence-tiny` at
     the demo recipe's image size and batch in fp32 and under bf16 autocast (on CPU, and on GPU when there is one);
     then `florence-tiny` (128 px) and `florence-base` (224 px) against Transformers' `VisionTextDualEncoderModel`
     (SwinModel + CLIPTextModel) with the same tower sizes on the same batch;
  3. a phase breakdown of the florence-tiny step and the operators that take most of its time (torch.profiler);
     then the same step with glibc's initial malloc settings and with `reuse_freed_memory` (what the trainers set),
     alternating in one process: ms and page faults per step;
  4. time to accuracy: minutes until the demo run's held-out zero-shot top-1 first reached 90%, read from the
     `metrics.csv` of a `make demo` run (`--demo-metrics`; skipped when there is none).

    python bench/bench_pretrain.py [--threads 2] [--tiny-batch 256] [--base-batch 8] [--repeats 5]
"""

import argparse
import contextlib
import csv
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_towers import dual_encoder_like, interleaved_medians  # noqa: E402

from modeling_florence import FlorenceModel, FlorenceProcessor, load_preset  # noqa: E402
from modeling_florence.evaluation_florence import load_templates  # noqa: E402
from modeling_florence.pretraining_florence import PretrainingData, Recipe, Stage  # noqa: E402
from modeling_florence.shapes import build_pairs  # noqa: E402
from modeling_florence.training_florence import (  # noqa: E402
    M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, glibc, reuse_freed_memory)

REPO = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO / "configuration" / "recipe-unicl-tiny.json"
STAGE = Stage("stage1", steps=1, prompt_templates=True)


def pretraining_data(image_size: int, batch_size: int, num_pairs: int, cache_images: bool = True,
                     num_workers: int = 0) -> PretrainingData:
    pairs = build_pairs(num_train=num_pairs, num_validation=0, num_test=0, image_size=image_size)["train"]
    processor = FlorenceProcessor.from_defaults(image_size=image_size)
    recipe = Recipe(batch_size=batch_size, stages=[STAGE], warmup_steps=0, cache_images=cache_images,
                    num_workers=num_workers)
    return PretrainingData(pairs, processor, recipe, load_templates())


def bench_data(image_size: int, batch_size: int, repeats: int) -> None:
    """Images/s of the trainer's DataLoader, timed from the first batch (worker start-up excluded)."""
    print(f"\nData loading (DataLoader), Florence Shapes {image_size} px, batch {batch_size}, {repeats} batches")
    rates = {}
    for cache_images, workers in ((False, 0), (False, 1), (False, 2), (True, 0)):
        data = pretraining_data(image_size, batch_size, batch_size * (repeats + 1), cache_images, workers)
        batches = iter(data.loader(STAGE, 0, repeats + 1))
        next(batches)  # starts the workers; with the cache: the whole set was preprocessed before this
        start = time.perf_counter()
        for _ in batches:
            pass
        name = "cache_images" if cache_images else f"{workers} worker{'s' if workers != 1 else ''}"
        rates[name] = batch_size * repeats / (time.perf_counter() - start)
        print(f"  {name:<14} {rates[name]:8.0f} images/s")
    print(f"  ratio 1 worker / 0 workers = {rates['1 worker'] / rates['0 workers']:.2f}x, "
          f"2 workers / 0 workers = {rates['2 workers'] / rates['0 workers']:.2f}x "
          "(workers only add cores: on a 2-core machine they compete with the training step)")


def train_step(model, batches, peer: bool = False, autocast: str | None = None):
    """One optimizer step as the trainer takes it; the peer gets the same batch without UniCL labels."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()
    device = next(model.parameters()).device
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if autocast == "bf16" else contextlib.nullcontext()

    def run():
        inputs = {k: v.to(device) for k, v in next(batches).items()}
        if peer:
            inputs.pop("labels")
        with precision:
            loss = model(**inputs, return_loss=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def endless_batches(data: PretrainingData):
    while True:
        yield from data.loader(STAGE, 0, 8)


def bench_precision(image_size: int, batch_size: int, repeats: int, device: str) -> None:
    """florence-tiny at the demo's size and batch: fp32 vs bf16 autocast, as the trainer runs them."""
    config = load_preset("florence-tiny", vision_config={"image_size": image_size, "drop_path_rate": 0.0})
    data = pretraining_data(image_size, batch_size, batch_size * 8)
    functions = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = FlorenceModel(config).to(device)
        functions[precision] = train_step(model, endless_batches(data), autocast=precision)
    times = interleaved_medians(functions, repeats, warmup=3)
    print(f"\nFull pretraining step, florence-tiny, batch {batch_size}, {image_size} px, {device}, cached images")
    for name, seconds in times.items():
        print(f"  {name:<6} {seconds * 1000:9.1f} ms  {batch_size / seconds:8.1f} images/s")
    print(f"  ratio fp32 / bf16 = {times['fp32'] / times['bf16']:.2f}x (> 1: bf16 is faster)")


def bench_step(preset: str, batch_size: int, repeats: int, image_size: int | None = None, peer: bool = True) -> None:
    """Ours against the dual encoder of the same tower sizes, fp32."""
    vision = {"drop_path_rate": 0.0} | ({"image_size": image_size} if image_size is not None else {})
    config = load_preset(preset, vision_config=vision)
    size = config.vision_config.image_size
    data = pretraining_data(size, batch_size, num_pairs=batch_size * 8)
    functions = {f"{preset} (ours)": train_step(FlorenceModel(config), endless_batches(data))}
    if peer:
        functions["VisionTextDualEncoder (Swin+CLIP)"] = train_step(dual_encoder_like(config), endless_batches(data),
                                                                    peer=True)
    times = interleaved_medians(functions, repeats, warmup=3)  # the first steps of a fresh model run slow
    print(f"\nFull pretraining step, {preset}, batch {batch_size}, {size} px, fp32, cached images")
    for name, seconds in times.items():
        print(f"  {name:<36} {seconds * 1000:9.1f} ms  {batch_size / seconds:8.1f} images/s")
    if peer:
        ratio = times["VisionTextDualEncoder (Swin+CLIP)"] / times[f"{preset} (ours)"]
        print(f"  ratio VisionTextDualEncoder / {preset} = {ratio:.2f}x (> 1: ours is faster)")


def profile_tiny(image_size: int, batch_size: int, repeats: int) -> None:
    """Seconds per phase of the florence-tiny step, then the operators with the most self CPU time."""
    model = FlorenceModel(load_preset("florence-tiny", vision_config={"image_size": image_size})).train()
    batches = endless_batches(pretraining_data(image_size, batch_size, batch_size * 8, cache_images=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    phases = {"data (uncached)": 0.0, "forward + UniCL loss": 0.0, "backward": 0.0, "clip + AdamW": 0.0}

    def step(index: int, timed: bool):
        marks = [time.perf_counter()]
        inputs = next(batches)
        marks.append(time.perf_counter())
        loss = model(**inputs, return_loss=True).loss
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if timed:
            for name, start, end in zip(phases, marks, marks[1:]):
                phases[name] += (end - start) / repeats

    step(0, timed=False)
    for index in range(1, repeats + 1):
        step(index, timed=True)
    total = sum(phases.values())
    print(f"\nWhere a florence-tiny step goes (batch {batch_size}, {image_size} px): {total * 1000:.0f} ms")
    for name, seconds in phases.items():
        print(f"  {name:<22} {seconds * 1000:8.1f} ms  {100 * seconds / total:5.1f}%")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        step(repeats + 1, timed=False)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


def bench_allocator(image_size: int, batch_size: int, repeats: int) -> None:
    """The florence-tiny step with glibc's initial malloc settings (128 KiB mmap and trim thresholds) and with
    `reuse_freed_memory`, switched back and forth in one process (mallopt applies to later allocations)."""
    libc = glibc()
    if libc is None:
        print("\nAllocator: not glibc, nothing to compare")
        return
    settings = {"glibc initial": lambda: (libc.mallopt(M_MMAP_THRESHOLD, 128 << 10),
                                          libc.mallopt(M_TRIM_THRESHOLD, 128 << 10), libc.malloc_trim(0)),
                "reuse_freed_memory": reuse_freed_memory}
    torch.manual_seed(0)
    model = FlorenceModel(load_preset("florence-tiny", vision_config={"image_size": image_size}))
    step = train_step(model, endless_batches(pretraining_data(image_size, batch_size, batch_size * 8)))
    for _ in range(3):
        step()
    seconds, faults = dict.fromkeys(settings, 0.0), dict.fromkeys(settings, 0)
    for _ in range(repeats):
        for name, apply in settings.items():
            apply()
            step()  # the first step after a switch settles the heap
            before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            for _ in range(4):
                step()
            seconds[name] += (time.perf_counter() - start) / (4 * repeats)
            faults[name] += (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // (4 * repeats)
    print(f"\nAllocator, florence-tiny step, batch {batch_size}, {image_size} px, fp32 "
          f"(alternating, {repeats} x 4 steps)")
    for name in settings:
        print(f"  {name:<20} {seconds[name] * 1000:8.1f} ms  {faults[name]:8d} page faults a step")
    ratio = seconds["glibc initial"] / seconds["reuse_freed_memory"]
    print(f"  ratio glibc initial / reuse_freed_memory = {ratio:.2f}x (> 1: reusing freed memory is faster)")


def time_to_accuracy(metrics: Path, target: float = 90.0) -> None:
    """Minutes (from the start of `train`, data generation included) until zero-shot top-1 first reached `target`."""
    print(f"\nTime to accuracy of the demo recipe ({metrics})")
    if not metrics.is_file():
        print("  no metrics.csv: run `make demo` first")
        return
    with open(metrics) as handle:
        evals = [row for row in csv.DictReader(handle) if row.get("zero_shot_top1") and row.get("minutes")]
    for row in evals:
        print(f"  step {int(row['step']):5d}  {float(row['minutes']):5.2f} min  zero-shot top-1 "
              f"{float(row['zero_shot_top1']):6.2f}  i2t R@5 {float(row['i2t_R@5']):6.2f}")
    reached = next((row for row in evals if float(row["zero_shot_top1"]) >= target), None)
    if reached is None:
        print(f"  top-1 never reached {target}%")
        return
    final = evals[-1]
    print(f"  {target:.0f}% zero-shot top-1 after {float(reached['minutes']):.2f} min (step {reached['step']}); the "
          f"run ended at {float(final['minutes']):.2f} min: ratio {float(final['minutes']) / float(reached['minutes']):.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny-batch", type=int, default=256, help="the demo recipe's global batch")
    parser.add_argument("--base-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--demo-metrics", type=Path, default=REPO / "outputs" / "florence-tiny-shapes" / "metrics.csv")
    parser.add_argument("--only", nargs="*",
                        default=["data", "precision", "peers", "profile", "allocator", "accuracy"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    recipe = Recipe.from_file(DEMO_RECIPE)
    demo_size = recipe.model_config().vision_config.image_size
    stage_sizes = sorted({stage.image_size or demo_size for stage in recipe.stages})  # the demo trains at each
    if "data" in args.only:
        bench_data(demo_size, args.tiny_batch, args.repeats)
    if "precision" in args.only:
        for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
            for size in stage_sizes:
                bench_precision(size, args.tiny_batch, args.repeats, device)
    if "peers" in args.only:
        # Transformers' SwinModel fails when a stage is smaller than the window (the demo's last stages are), so the
        # comparison with it runs florence-tiny at 128 px, where every stage holds a whole window.
        bench_step("florence-tiny", args.tiny_batch // 4, args.repeats, image_size=128)
        bench_step("florence-base", args.base_batch, max(2, args.repeats // 2))
    if "profile" in args.only:
        profile_tiny(stage_sizes[0], args.tiny_batch, args.repeats)
    if "allocator" in args.only:
        bench_allocator(stage_sizes[0], args.tiny_batch, args.repeats)
    if "accuracy" in args.only:
        time_to_accuracy(args.demo_metrics)


if __name__ == "__main__":
    main()
