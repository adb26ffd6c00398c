"""Images/s of a full UniCL pretraining step, of data loading, and where a step's time goes.

In one process on the same batches:
  1. data loading (`BatchMaker` on Florence Shapes: PNG decode + resize/normalise + tokenise + UniCL labels), with
     images preprocessed on every step and with the recipe's `cache_images`;
  2. one full optimizer step (batch, forward, UniCL loss, backward, gradient clipping, fused AdamW) of
     `florence-tiny` (the demo recipe's image size and batch) and `florence-base` (224 px), against Transformers'
     `VisionTextDualEncoderModel` (SwinModel + CLIPTextModel) with the same tower sizes on the same batch;
  3. a phase breakdown of the florence-tiny step and the operators that take most of its time (torch.profiler).

    python bench/bench_pretrain.py [--threads 2] [--tiny-batch 256] [--base-batch 8] [--repeats 5]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_towers import dual_encoder_like, interleaved_medians  # noqa: E402

from modeling_florence import FlorenceModel, FlorenceProcessor, load_preset  # noqa: E402
from modeling_florence.evaluation_florence import load_templates  # noqa: E402
from modeling_florence.pretraining_florence import BatchMaker, Recipe, Stage  # noqa: E402
from modeling_florence.shapes import build_pairs  # noqa: E402

DEMO_RECIPE = Path(__file__).resolve().parent.parent / "configuration" / "recipe-unicl-tiny.json"
STAGE = Stage("stage1", steps=1, prompt_templates=True)


def batch_maker(image_size: int, batch_size: int, num_pairs: int, cache_images: bool) -> BatchMaker:
    pairs = build_pairs(num_train=num_pairs, num_validation=0, num_test=0, image_size=image_size)["train"]
    processor = FlorenceProcessor.from_defaults(image_size=image_size)
    recipe = Recipe(batch_size=batch_size, stages=[STAGE])
    return BatchMaker(pairs, processor, recipe, load_templates(), rank=0, world_size=1, cache_images=cache_images)


def bench_data(image_size: int, batch_size: int, repeats: int):
    print(f"\nData loading, Florence Shapes {image_size} px, batch {batch_size}")
    for cache_images in (False, True):
        batches = batch_maker(image_size, batch_size, num_pairs=batch_size * (repeats + 1), cache_images=cache_images)
        start = time.perf_counter()
        batches(0, STAGE)  # with the cache: preprocesses the whole set here
        first = time.perf_counter() - start
        start = time.perf_counter()
        for step in range(1, repeats + 1):
            batches(step, STAGE)
        seconds = (time.perf_counter() - start) / repeats
        name = "cache_images" if cache_images else "preprocess every step"
        print(f"  {name:<24} {batch_size / seconds:8.0f} images/s  (first batch {first * 1000:.0f} ms)")


def train_step(model, batches: BatchMaker, peer: bool = False):
    """One optimizer step as the trainer takes it; the peer gets the same batch without UniCL labels."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()
    step = [0]

    def run():
        inputs = batches(step[0], STAGE)
        step[0] += 1
        if peer:
            inputs.pop("labels")
        loss = model(**inputs, return_loss=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def bench_step(preset: str, batch_size: int, repeats: int, image_size: int | None = None, peer: bool = True) -> None:
    vision = {"drop_path_rate": 0.0} | ({"image_size": image_size} if image_size is not None else {})
    config = load_preset(preset, vision_config=vision)
    size = config.vision_config.image_size
    batches = batch_maker(size, batch_size, num_pairs=batch_size * (repeats + 2), cache_images=True)
    batches(0, STAGE)  # fill the cache outside the timing
    functions = {f"{preset} (ours)": train_step(FlorenceModel(config), batches)}
    if peer:
        functions["VisionTextDualEncoder (Swin+CLIP)"] = train_step(dual_encoder_like(config), batches, peer=True)
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
    batches = batch_maker(image_size, batch_size, num_pairs=batch_size * (repeats + 2), cache_images=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    phases = {"data (uncached)": 0.0, "forward + UniCL loss": 0.0, "backward": 0.0, "clip + AdamW": 0.0}

    def step(index: int, timed: bool):
        marks = [time.perf_counter()]
        inputs = batches(index, STAGE)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny-batch", type=int, default=256, help="the demo recipe's global batch")
    parser.add_argument("--base-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU")
    demo_size = Recipe.from_file(DEMO_RECIPE).model_config().vision_config.image_size
    bench_data(demo_size, args.tiny_batch, args.repeats)
    # Transformers' SwinModel fails when a stage is smaller than the window (the demo's last stages are), so the
    # comparison with it runs florence-tiny at 128 px, where every stage holds a whole window.
    bench_step("florence-tiny", args.tiny_batch, args.repeats, image_size=demo_size, peer=False)
    bench_step("florence-tiny", args.tiny_batch // 4, args.repeats, image_size=128)
    bench_step("florence-base", args.base_batch, max(2, args.repeats // 2))
    profile_tiny(demo_size, args.tiny_batch, args.repeats)


if __name__ == "__main__":
    main()
