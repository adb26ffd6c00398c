"""Time Video CoSwin against torchvision's `swin3d_t`, in one process on the same input.

Prints seconds per call (median of interleaved repeats), speed ratios `torchvision_time / our_time` (> 1: we are
faster) and the activation memory training holds:
  - Video CoSwin-T in `linear` / `merge` mode (the Video Swin architecture, torchvision's weights converted) vs
    `torchvision.models.video.swin3d_t`, forward and forward+backward, batch 1 and 2, 16 frames x 224 px, fp32;
  - Video CoSwin-T in `conv` mode (Florence's 3-D convolutional tokenizer and merging) vs the same peer.
Goal: `merge` mode >= 1.0x torchvision forward and backward.

`--clock process` times CPU seconds of this process instead of wall seconds: on a machine shared with other jobs,
wall time mostly measures waiting for a core (use it with `--threads 1`, where CPU time is the work done).

    python bench/bench_video.py [--threads 2] [--batch-sizes 1 2] [--frames 16] [--size 224] [--repeats 3]
                                [--clock wall|process]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.models.video import swin3d_t

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conversion.convert_video_swin import convert  # noqa: E402
from modeling_florence import FlorenceVideoVisionConfig, FlorenceVideoVisionModel  # noqa: E402


def interleaved_medians(functions: dict, repeats: int, warmup: int = 1, clock=time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each function, run round-robin so machine drift hits all alike."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = clock()
            function()
            samples[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def saved_activations_mib(function) -> float:
    """MiB of tensors autograd saves for backward during one forward: what training holds at its peak (beyond the
    weights), measured exactly and on any device. On CUDA the allocator's peak is printed as well."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function()
    return total / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", default="wall", choices=["wall", "process"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    peer = swin3d_t().to(device)
    merge = convert(peer.state_dict()).vision_model.to(device)  # same weights, Video Swin architecture
    conv_config = FlorenceVideoVisionConfig(**{**merge.config.to_dict(), "patch_embed": "conv", "downsample": "conv",
                                               "window_bias": "subtable"})
    conv = FlorenceVideoVisionModel(conv_config).to(device)
    models = {"torchvision swin3d_t": peer, "florence merge": merge, "florence conv": conv}
    for model in models.values():
        model.eval()  # no dropout / stochastic depth: both sides compute the same function; backward still runs

    def run(name, clip, backward):
        model = models[name]
        if name.startswith("torchvision"):
            out = model.norm(model.features(model.patch_embed(clip)))
        else:
            out = model(pixel_values=clip.transpose(1, 2)).last_hidden_state
        if backward:
            out.float().square().mean().backward()

    print(f"device {device}, threads {args.threads}, {args.clock} clock, {args.frames} frames x {args.size} px, fp32 "
          f"(median of {args.repeats}; ratio = torchvision time / ours, > 1 is faster)")
    header = f"{'batch':>5} | {'pass':<16} | {'torchvision s':>13} | {'merge s':>8} | {'ratio':>5} | {'conv s':>7} | {'ratio':>5}"
    print(header + "\n" + "-" * len(header))
    for batch in args.batch_sizes:
        clip = torch.randn(batch, 3, args.frames, args.size, args.size, device=device)
        for backward in (False, True):
            functions = {}
            for name in models:
                if backward:
                    functions[name] = lambda name=name: run(name, clip, True)
                else:
                    functions[name] = lambda name=name: torch.no_grad()(run)(name, clip, False)
            times = interleaved_medians(functions, args.repeats,
                                        clock=time.process_time if args.clock == "process" else time.perf_counter)
            peer_time = times["torchvision swin3d_t"]
            label = "forward+backward" if backward else "forward"
            print(f"{batch:>5} | {label:<16} | {peer_time:>13.3f} | {times['florence merge']:>8.3f} | "
                  f"{peer_time / times['florence merge']:>5.2f} | {times['florence conv']:>7.3f} | "
                  f"{peer_time / times['florence conv']:>5.2f}")
            for model in models.values():
                model.zero_grad(set_to_none=True)
    clip = torch.randn(args.batch_sizes[0], 3, args.frames, args.size, args.size, device=device)
    memory = {name: saved_activations_mib(lambda name=name: run(name, clip, False)) for name in models}
    print(f"activations saved for backward (MiB, batch {args.batch_sizes[0]}): "
          + ", ".join(f"{name} {value:.0f}" for name, value in memory.items()))
    if device.type == "cuda":
        for name in models:
            torch.cuda.reset_peak_memory_stats()
            run(name, clip, True)
            print(f"CUDA peak allocated, {name}: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")

if __name__ == "__main__":
    main()
