"""Full fine-tuning vs LoRA: training steps/s and peak memory of `FlorenceForImageClassification`.

Default: florence-base's CoSwin-B at 224 px, batch 8, on the CPU, a few timed steps each (short; raise --steps for
steadier numbers), in three settings: fp32, fp32 with gradient checkpointing, and bf16 autocast with gradient
checkpointing (the setting of a GPU run, `--device cuda`; this CPU has bf16 matmuls too). Peak memory is
the process's peak RSS growth over the run on CPU (each configuration runs in its own subprocess, so peaks do not
mix) and `torch.cuda.max_memory_allocated` on GPU. On CPU, memory is measured in a second subprocess per
configuration whose glibc mmap threshold is fixed at its default 128 KiB (`MALLOC_MMAP_THRESHOLD_`): glibc otherwise
raises the threshold as large blocks are freed and then keeps freed tensor memory in its heap, so peak RSS would
measure the allocator's history rather than the tensors alive at once (what `max_memory_allocated` gives on GPU).
Speed is timed with the allocator as it is (the fixed threshold costs page faults). Prints a table and the LoRA /
full ratios (goal: LoRA >= 1.3x faster, >= 40% less peak memory).

    python bench/bench_finetune.py                       # florence-base, 224 px, batch 8, CPU
    python bench/bench_finetune.py --preset florence-tiny --image_size 64 --steps 5
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

import modeling_florence as mf
from modeling_florence.peft_florence import default_lora_config, parameter_counts


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def build(preset: str, image_size: int, num_labels: int = 1000):
    vision = mf.load_preset(preset, vision_config={"image_size": image_size}).vision_config
    labels = {index: f"class {index}" for index in range(num_labels)}
    config = mf.FlorenceVisionConfig.from_dict(
        {**vision.to_dict(), "id2label": labels, "label2id": {n: i for i, n in labels.items()}})
    return mf.FlorenceForImageClassification(config)


SETTINGS = {"fp32": (False, False), "fp32+ckpt": (False, True), "bf16+ckpt": (True, True)}  # (bf16, checkpointing)


def measure(preset: str, mode: str, image_size: int, batch: int, steps: int, warmup: int, device: str,
            setting: str) -> dict:
    """One configuration, in this process: optimizer steps/s and peak memory."""
    bf16, checkpointing = SETTINGS[setting]
    torch.manual_seed(0)
    before = peak_rss_mib()
    model = build(preset, image_size).to(device).train()
    if mode == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, default_lora_config(model, r=8))
    if checkpointing:
        (model.get_base_model() if mode == "lora" else model).gradient_checkpointing_enable()
    trainable, total = parameter_counts(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pixel_values = torch.randn(batch, 3, image_size, image_size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mib() - before
    return {"mode": mode, "setting": setting, "steps_per_s": steps / seconds,
            "peak_mib": peak, "trainable": trainable, "total": total}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="florence-base")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args(argv)

    if args.one:
        mode, setting = args.one.split(",")
        print(json.dumps(measure(args.preset, mode, args.image_size, args.batch_size, args.steps, args.warmup,
                                 args.device, setting)))
        return

    def run(mode: str, setting: str, steps: int, env: dict) -> dict:
        command = [sys.executable, __file__, "--one", f"{mode},{setting}", "--preset", args.preset, "--image_size",
                   str(args.image_size), "--batch_size", str(args.batch_size), "--steps", str(steps),
                   "--warmup", str(args.warmup), "--device", args.device]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode:
            raise RuntimeError(result.stderr[-2000:])
        return json.loads(result.stdout.strip().splitlines()[-1])

    rows = []
    for setting, mode in [(setting, mode) for setting in args.settings for mode in ("full", "lora")]:
        row = run(mode, setting, args.steps, dict(os.environ))
        if not args.device.startswith("cuda"):  # peak memory from a run with glibc returning freed blocks at once
            row["peak_mib"] = run(mode, setting, 1, {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), **os.environ})[
                "peak_mib"]
        rows.append(row)

    print(f"{args.preset}, {args.image_size} px, batch {args.batch_size}, {args.device}, {args.steps} timed steps")
    print("mode | setting   | steps/s | peak MiB | trainable")
    for row in rows:
        print(f"{row['mode']:<4} | {row['setting']:<9} | {row['steps_per_s']:7.3f} | "
              f"{row['peak_mib']:8.0f} | {row['trainable']:,} of {row['total']:,}")
    for setting in args.settings:
        pair = {row["mode"]: row for row in rows if row["setting"] == setting}
        if len(pair) == 2:
            speed = pair["lora"]["steps_per_s"] / pair["full"]["steps_per_s"]
            memory = 1 - pair["lora"]["peak_mib"] / pair["full"]["peak_mib"]
            print(f"LoRA vs full ({setting}): {speed:.2f}x steps/s (goal >= 1.3x), "
                  f"{100 * memory:.0f}% less peak memory (goal >= 40%)")


if __name__ == "__main__":
    main()
