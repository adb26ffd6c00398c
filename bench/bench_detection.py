"""Benchmark FlorenceForObjectDetection: the Dynamic Head's cost against the same FPN + ATSS without it.

First, the deformable convolution against a dense 3x3 conv of the same shape (forward, forward + backward): one
modulated deformable conv on P3 (this device's path, and torchvision's kernel for comparison), and one DyHead block
over the whole pyramid against one dense 3x3 conv per level. Goal on CPU: block forward + backward <= 2x the dense
convs. Then images/s of inference and of a training step (forward + backward + AdamW) for `florence-detection-base`
(CoSwin-B, FPN 256, 6 DyHead blocks) and for the same detector with `num_dyhead_blocks=0`, at 800x1333 with batch 1
and 2; the time of the FPN alone and of one DyHead block on the pyramid of that input; peak memory (CUDA) and the
split of the inference time into backbone / FPN / DyHead / head+decoding. Goal: the 6 DyHead blocks add at most 60%
to FPN + ATSS inference on CPU (30% on GPU, the paper's "light head" claim).

    python bench/bench_detection.py [--preset florence-detection-base] [--height 800 --width 1333]
                                    [--batch-sizes 1 2] [--repeats 3] [--threads 2] [--skip-train-step]
                                    [--only-deform-conv]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from torchvision.ops import deform_conv2d  # noqa: E402

from modeling_florence import FlorenceDetectionConfig, FlorenceForObjectDetection, load_preset  # noqa: E402
from modeling_florence.deform_conv_florence import modulated_deform_conv2d  # noqa: E402
from modeling_florence.modeling_florence_detection import FlorenceDyHeadBlock  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(function, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def peak_memory(function) -> str:
    if DEVICE.type != "cuda":
        return "n/a (CPU)"
    torch.cuda.reset_peak_memory_stats()
    function()
    synchronize()
    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


def spread(function, repeats: int) -> tuple[float, float]:
    """(min, max) seconds over `repeats` runs after one warm-up: the machine is shared, so give the range."""
    function()
    synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize()
        samples.append(time.perf_counter() - start)
    return min(samples), max(samples)


def forward_backward(function, inputs):
    """A closure running `function(*inputs)` then backward of its sum (of all outputs)."""
    def run():
        outputs = function(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        sum(output.float().sum() for output in outputs).backward()
    return run


def no_grad(function, inputs):
    def run():
        with torch.no_grad():
            function(*inputs)
    return run


def print_ratio(name: str, fast: tuple[float, float], dense: tuple[float, float]) -> None:
    print(f"  {name:<34} {fast[0] * 1000:8.1f}-{fast[1] * 1000:<8.1f} ms   dense {dense[0] * 1000:8.1f}-"
          f"{dense[1] * 1000:<8.1f} ms   ratio {fast[0] / dense[1]:.2f}-{fast[1] / dense[0]:.2f}x")


def deform_conv_against_dense(config, height: int, width: int, repeats: int) -> None:
    """One modulated deformable conv on P3 and one DyHead block on the pyramid, against dense 3x3 convs."""
    channels = config.fpn_channels
    torch.manual_seed(0)
    sizes = [(-(-height // stride), -(-width // stride)) for stride in (8, 16, 32, 64, 128)]  # stride-2 convs: ceil
    pyramid = [torch.randn(1, channels, h, w, device=DEVICE, requires_grad=True) for h, w in sizes]
    x = pyramid[0]
    offset = torch.randn(1, 18, *sizes[0], device=DEVICE, requires_grad=True)
    mask = torch.rand(1, 9, *sizes[0], device=DEVICE, requires_grad=True)
    weight = (torch.randn(channels, channels, 3, 3, device=DEVICE) * 0.02).requires_grad_()
    bias = torch.zeros(channels, device=DEVICE, requires_grad=True)
    dense = lambda x: torch.nn.functional.conv2d(x, weight, bias, padding=1)  # noqa: E731
    ours = lambda x, o, m: modulated_deform_conv2d(x, o, weight, bias, padding=1, mask=m)  # noqa: E731
    theirs = lambda x, o, m: deform_conv2d(x, o, weight, bias, padding=1, mask=m)  # noqa: E731
    print(f"\ndeformable vs dense 3x3 conv, {channels} channels, P3 {sizes[0][0]}x{sizes[0][1]}, fp32, "
          f"min-max of {repeats}:")
    for label, run in (("fwd", no_grad), ("fwd+bwd", forward_backward)):
        base = spread(run(dense, (x,)), repeats)
        print_ratio(f"modulated_deform_conv2d {label}", spread(run(ours, (x, offset, mask)), repeats), base)
        if DEVICE.type == "cpu":  # torchvision's CPU kernel, the previous path, for comparison
            print_ratio(f"torchvision deform_conv2d {label}", spread(run(theirs, (x, offset, mask)), 1), base)
    block = FlorenceDyHeadBlock(config).to(DEVICE)

    def dense_branches(*levels):
        """The convs of a DyHead block made dense, same shapes: level L, L-1 at stride 2, L+1 (no attention)."""
        outputs = []
        for level, feature in enumerate(levels):
            outputs.append(dense(feature))
            if level > 0:
                outputs.append(torch.nn.functional.conv2d(levels[level - 1], weight, bias, stride=2, padding=1))
            if level < len(levels) - 1:
                outputs.append(dense(levels[level + 1]))
        return tuple(outputs)

    for label, run in (("fwd", no_grad), ("fwd+bwd", forward_backward)):
        print_ratio(f"DyHead block (5 levels) {label}", spread(run(block, pyramid), repeats),
                    spread(run(dense_branches, pyramid), repeats))


def build(config: FlorenceDetectionConfig, blocks: int) -> FlorenceForObjectDetection:
    torch.manual_seed(0)
    return FlorenceForObjectDetection(FlorenceDetectionConfig(**{**config.to_dict(), "num_dyhead_blocks": blocks}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="florence-detection-base")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1344)  # 1333 padded to a multiple of 128, as the processor does
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-train-step", action="store_true")
    parser.add_argument("--only-deform-conv", action="store_true", help="stop after the deformable-conv section")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_preset(args.preset)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    deform_conv_against_dense(config, args.height, args.width, args.repeats)
    if args.only_deform_conv:
        return
    models = {f"DyHead x{config.num_dyhead_blocks}": build(config, config.num_dyhead_blocks), "no DyHead": build(config, 0)}
    for model in models.values():
        model.to(DEVICE)
    print(f"device {DEVICE}, {args.preset}, {args.height}x{args.width}, fp32, median of {args.repeats}")

    rows = []
    for batch in args.batch_sizes:
        pixels = torch.randn(batch, 3, args.height, args.width, device=DEVICE)
        labels = [{"class_labels": torch.tensor([0, 1], device=DEVICE),
                   "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]], device=DEVICE)}] * batch
        for name, model in models.items():
            model.eval()

            def infer():
                with torch.no_grad():
                    model(pixels)

            seconds = median_seconds(infer, args.repeats)
            row = {"model": name, "batch": batch, "infer img/s": batch / seconds, "infer s": seconds,
                   "infer peak": peak_memory(infer)}
            if not args.skip_train_step:
                model.train()
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

                def step():
                    optimizer.zero_grad(set_to_none=True)
                    model(pixels, labels=labels).loss.backward()
                    optimizer.step()

                train_seconds = median_seconds(step, args.repeats)
                row.update({"train img/s": batch / train_seconds, "train peak": peak_memory(step)})
            rows.append(row)

    print(f"\n{'model':<12} {'batch':>5} {'infer img/s':>12} {'train img/s':>12} {'infer peak':>12} {'train peak':>12}")
    for row in rows:
        print(f"{row['model']:<12} {row['batch']:>5} {row['infer img/s']:>12.3f} {row.get('train img/s', float('nan')):>12.3f}"
              f" {row['infer peak']:>12} {row.get('train peak', '-'):>12}")
    for batch in args.batch_sizes:
        with_head, without = (next(r for r in rows if r["model"] == name and r["batch"] == batch) for name in models)
        overhead = with_head["infer s"] / without["infer s"] - 1
        print(f"batch {batch}: DyHead adds {100 * overhead:.1f}% to FPN + ATSS inference time "
              "(goal <= 60% on CPU, 30% on GPU)")

    # Where the time goes (batch 1): backbone, FPN, one DyHead block, all blocks, head + box decoding.
    model = models[f"DyHead x{config.num_dyhead_blocks}"].eval()
    pixels = torch.randn(1, 3, args.height, args.width, device=DEVICE)
    with torch.no_grad():
        features, _ = model.backbone_features(pixels, False, False)
        pyramid = model.fpn(features)
        parts = {
            "backbone": lambda: model.backbone_features(pixels, False, False),
            "FPN": lambda: model.fpn(features),
            "one DyHead block": lambda: model.dyhead[0](*pyramid),
            "head": lambda: model.head(pyramid, model.class_embeddings),
        }
        timings = {name: median_seconds(fn, args.repeats) for name, fn in parts.items()}
    total = timings["backbone"] + timings["FPN"] + config.num_dyhead_blocks * timings["one DyHead block"] + timings["head"]
    print("\nbatch 1 inference split:")
    for name, seconds in timings.items():
        count = config.num_dyhead_blocks if name == "one DyHead block" else 1
        print(f"  {name:<18} {seconds * 1000:9.1f} ms" + (f"  (x{count} = {100 * count * seconds / total:.1f}%)"
                                                            if count > 1 else f"  ({100 * seconds / total:.1f}%)"))
    print(f"  one DyHead block / FPN = {timings['one DyHead block'] / timings['FPN']:.2f}x")


if __name__ == "__main__":
    main()
