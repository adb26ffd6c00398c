"""Time Florence-2 generation in the family against Transformers' own `Florence2ForConditionalGeneration`, in one
process on the same weights and inputs, then the CoSwin-T image tower against the DaViT-base tower.

Prints seconds per call (median of interleaved repeats, the order alternating between rounds; for ours vs Transformers
also the best repeat, which other jobs on a shared machine can only slow down) and speed ratios
`transformers_time / our_time` (>= 1: ours is as fast or faster):
  1. `FlorenceForConditionalGeneration` (DaViT tower) vs `transformers.Florence2ForConditionalGeneration` loaded from
     the folder ours saved (equal weights: logits and generated tokens are checked equal first), Florence-2-base sizes
     (DaViT-base 128/256/512/1024 x [1,1,9,1], BART-base 768 wide, 6+6 layers), random weights, fp32:
     - forward, teacher-forced with `--label-length` labels (loss included), no grad;
     - `generate`, greedy, exactly `--new-tokens` new tokens (min_new_tokens = max_new_tokens), as tokens/s.
     Goal: >= 1.0x for both (the code underneath is Transformers'; this shows any overhead of ours).
  2. CoSwin-T (`configuration/coswin-t.json`, conv mode) vs the DaViT-base tower (Transformers'
     `Florence2VisionBackbone`) at `--tower-image-size` (768) px, batch 1, forward and forward + backward.
     A comparison of the two towers (DaViT-base is ~3x CoSwin-T's parameters), no goal.

    python bench/bench_generation.py [--image-size 384] [--batch-size 1] [--new-tokens 20] [--label-length 20]
                                     [--repeats 5] [--threads 2] [--tower-image-size 768] [--tower-repeats 3]
                                     [--small] [--skip-towers] [--skip-generation] [--profile]
                                     [--clock wall|process]

`--small` uses a tiny DaViT + BART (a quick check of the script); `--profile` prints the top operators of one
forward and one `generate` of each model (torch.profiler, CPU time). `--clock process` times CPU seconds of this
process instead of wall seconds: on a machine shared with other jobs, use it with `--threads 1`.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import Florence2ForConditionalGeneration
from transformers.models.florence2.modeling_florence2 import Florence2VisionBackbone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modeling_florence import (  # noqa: E402
    FlorenceForConditionalGeneration,
    FlorenceGenerationConfig,
    FlorenceVisionModel,
    load_preset,
)

DEVICE = torch.device("cpu")
CLOCK = time.perf_counter
OURS, THEIRS = "ours (FlorenceForConditionalGeneration)", "transformers Florence2ForConditionalGeneration"

# Florence-2-base: DaViT-base (Transformers' Florence2VisionConfig defaults) projected to BART-base's 768 wide tokens.
DAVIT_BASE = dict(embed_dim=[128, 256, 512, 1024], depths=[1, 1, 9, 1], num_heads=[4, 8, 16, 32],
                  num_groups=[4, 8, 16, 32], window_size=12, projection_dim=768, drop_path_rate=0.0)
BART_BASE = dict(model_type="bart", d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, vocab_size=51290,
                 max_position_embeddings=1024, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
IMAGE_TOKEN_ID = 51289  # Florence-2's <image>, the last id of the 51290-token vocabulary
# --small: a tiny DaViT + BART, same layout.
DAVIT_SMALL = dict(depths=[1, 2], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                   patch_prenorm=[False, True], embed_dim=[32, 64], num_heads=[2, 4], num_groups=[2, 4],
                   window_size=4, projection_dim=64, drop_path_rate=0.0)
BART_SMALL = dict(BART_BASE, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=1000)
IMAGE_TOKEN_ID_SMALL = 999


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def cpu_flags() -> str:
    """The SIMD flags that decide which CPU kernels run (from /proc/cpuinfo; empty elsewhere)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in wanted)


def interleaved_times(functions: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call of each function (`CLOCK`), run round-robin (order reversed every other round) so machine
    drift and who-runs-first hit all alike."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    samples = {name: [] for name in functions}
    names = list(functions)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            synchronize()
            start = CLOCK()
            functions[name]()
            synchronize()
            samples[name].append(CLOCK() - start)
    return samples


def verdict(ratio: float, goal: float) -> str:
    return "meets" if ratio >= goal else ("within noise" if ratio >= 0.97 * goal else "BELOW")


# ----------------------------------------------------------------------------------------------------------------------
# 1. Ours vs Transformers' Florence2ForConditionalGeneration
# ----------------------------------------------------------------------------------------------------------------------
def build_models(small: bool):
    """Ours from a Florence-2-base-like config (random weights), and Transformers' model loaded from ours's folder."""
    config = FlorenceGenerationConfig(
        vision_tower="davit", vision_config=DAVIT_SMALL if small else DAVIT_BASE,
        text_config=BART_SMALL if small else BART_BASE,
        image_token_id=IMAGE_TOKEN_ID_SMALL if small else IMAGE_TOKEN_ID,
    )
    ours = FlorenceForConditionalGeneration(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder)
        theirs = Florence2ForConditionalGeneration.from_pretrained(folder).eval()
    return ours.to(DEVICE), theirs.to(DEVICE)


def make_inputs(ours, batch_size: int, image_size: int, label_length: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    vocab = ours.config.text_config.vocab_size
    image_tokens = ours.num_image_tokens(image_size, image_size)
    prompt = torch.randint(3, vocab - 2, (batch_size, 8), generator=generator)  # "<s> What does the image ... </s>"
    prompt[:, 0], prompt[:, -1] = 0, 2
    input_ids = torch.cat([torch.full((batch_size, image_tokens), ours.config.image_token_id), prompt], dim=1)
    labels = torch.randint(3, vocab - 2, (batch_size, label_length), generator=generator)
    labels[:, -1] = 2
    return {
        "input_ids": input_ids.to(DEVICE),
        "attention_mask": torch.ones_like(input_ids).to(DEVICE),
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(DEVICE),
        "labels": labels.to(DEVICE),
    }


def check_parity(ours, theirs, inputs: dict, generate_kwargs: dict) -> int:
    """Equal logits and equal tokens (else the timings would compare different work); returns the new-token count."""
    with torch.no_grad():
        expected, actual = theirs(**inputs).logits, ours(**inputs).logits
    difference = (expected - actual).abs().max().item()
    if difference > 1e-4:
        raise RuntimeError(f"ours and Transformers' logits differ by {difference:.2e}: not the same model")
    prompt = {key: value for key, value in inputs.items() if key != "labels"}
    tokens_ours = ours.generate(**prompt, **generate_kwargs)
    tokens_theirs = theirs.generate(**prompt, **generate_kwargs)
    if not torch.equal(tokens_ours, tokens_theirs):
        raise RuntimeError("ours and Transformers' generate() wrote different tokens")
    return (tokens_ours.shape[1] - 1) * tokens_ours.shape[0]  # minus the decoder start token


def forward_fn(model, inputs: dict):
    def run():
        with torch.no_grad():
            model(**inputs).loss.item()

    return run


def generate_fn(model, inputs: dict, generate_kwargs: dict):
    prompt = {key: value for key, value in inputs.items() if key != "labels"}

    def run():
        with torch.no_grad():
            model.generate(**prompt, **generate_kwargs)

    return run


def profile(functions: dict, rows: int = 15):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for name, function in functions.items():
        function()  # warm
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            function()
        print(f"\nProfile: {name}")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=rows))


def bench_generation(args):
    ours, theirs = build_models(args.small)
    inputs = make_inputs(ours, args.batch_size, args.image_size, args.label_length)
    generate_kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                           num_beams=1)
    new_tokens = check_parity(ours, theirs, inputs, generate_kwargs)
    parameters = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"\n{'tiny (--small)' if args.small else 'Florence-2-base sizes'}: {parameters:.0f}M parameters, "
          f"{args.image_size} px ({inputs['input_ids'].shape[1]} encoder tokens), batch {args.batch_size}, "
          f"{args.label_length} labels, {new_tokens // args.batch_size} new tokens, fp32, random weights "
          "(logits and tokens checked equal)")

    times = {
        "forward": interleaved_times({OURS: forward_fn(ours, inputs), THEIRS: forward_fn(theirs, inputs)},
                                     args.repeats),
        "generate": interleaved_times({OURS: generate_fn(ours, inputs, generate_kwargs),
                                       THEIRS: generate_fn(theirs, inputs, generate_kwargs)}, args.repeats),
    }
    median = {phase: {name: statistics.median(v) for name, v in samples.items()} for phase, samples in times.items()}
    best = {phase: {name: min(v) for name, v in samples.items()} for phase, samples in times.items()}
    print(f"  {'median of ' + str(args.repeats) + ' (best)':<48} {'forward':>20} {'generate':>20} {'tokens/s':>10}")
    for name in (OURS, THEIRS):
        print(f"  {name:<48} {median['forward'][name] * 1000:8.1f} ({best['forward'][name] * 1000:7.1f}) ms "
              f"{median['generate'][name] * 1000:8.1f} ({best['generate'][name] * 1000:7.1f}) ms "
              f"{new_tokens / median['generate'][name]:10.1f}")
    for phase, label in (("forward", "forward"), ("generate", "generate tokens/s")):
        ratio = median[phase][THEIRS] / median[phase][OURS]
        ratio_best = best[phase][THEIRS] / best[phase][OURS]
        print(f"  ratio transformers / ours, {label:<18} = {ratio:.3f}x median, {ratio_best:.3f}x best  "
              f"(goal >= 1.0x: {verdict(max(ratio, ratio_best), 1.0)})")
    if args.profile:
        profile({
            f"{OURS} forward": forward_fn(ours, inputs), f"{THEIRS} forward": forward_fn(theirs, inputs),
            f"{OURS} generate": generate_fn(ours, inputs, generate_kwargs),
            f"{THEIRS} generate": generate_fn(theirs, inputs, generate_kwargs),
        })


# ----------------------------------------------------------------------------------------------------------------------
# 2. CoSwin-T vs DaViT-base towers
# ----------------------------------------------------------------------------------------------------------------------
def bench_towers(args):
    from transformers import Florence2VisionConfig

    coswin = FlorenceVisionModel(load_preset("coswin-t", drop_path_rate=0.0)).to(DEVICE)
    davit = Florence2VisionBackbone(Florence2VisionConfig(**DAVIT_BASE)).to(DEVICE)
    size = args.tower_image_size
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    towers = {"CoSwin-T (ours, conv mode)": coswin, "DaViT-base (Florence2VisionBackbone)": davit}
    count = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in towers.items()}

    def forward(model):
        def run():
            model.eval()
            with torch.no_grad():
                model(pixel_values).last_hidden_state.sum().item()

        return run

    def forward_backward(model):
        def run():
            model.train()
            model.zero_grad(set_to_none=True)
            model(pixel_values).last_hidden_state.float().mean().backward()

        return run

    times = {
        "forward": interleaved_times({n: forward(m) for n, m in towers.items()}, args.tower_repeats),
        "forward + backward": interleaved_times({n: forward_backward(m) for n, m in towers.items()},
                                                args.tower_repeats),
    }
    median = {phase: {name: statistics.median(v) for name, v in samples.items()} for phase, samples in times.items()}
    print(f"\nImage towers, batch 1, {size} px, fp32, median of {args.tower_repeats}")
    print(f"  {'':<40} {'params':>8} {'forward':>12} {'fwd + bwd':>12}")
    for name in towers:
        print(f"  {name:<40} {count[name]:7.1f}M {median['forward'][name] * 1000:9.1f} ms "
              f"{median['forward + backward'][name] * 1000:9.1f} ms")
    coswin_name, davit_name = towers
    for phase, seconds in median.items():
        print(f"  ratio DaViT-base / CoSwin-T, {phase:<18} = {seconds[davit_name] / seconds[coswin_name]:.2f}x")

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=None, help="384 (64 with --small)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--label-length", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tower-image-size", type=int, default=None, help="768 (224 with --small)")
    parser.add_argument("--tower-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="a tiny DaViT + BART: a quick check of the script")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--skip-towers", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of ours and theirs")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="process: CPU seconds of this process (on a machine shared with other jobs; use with "
                             "--threads 1, where CPU time is the work done)")
    parser.add_argument("--device", default="cpu", help="cpu (the reference setting) or cuda")
    args = parser.parse_args(argv)
    args.image_size = args.image_size or (64 if args.small else 384)
    args.tower_image_size = args.tower_image_size or (224 if args.small else 768)
    global DEVICE, CLOCK
    DEVICE = torch.device(args.device)
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"device {DEVICE}, {args.clock} clock")
    print(f"CPU flags: {cpu_flags()}")
    if not args.skip_generation:
        bench_generation(args)
    if not args.skip_towers:
        bench_towers(args)


if __name__ == "__main__":
    main()
