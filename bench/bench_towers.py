"""Time CoSwin and the Florence training step against their peers, in one process on the same inputs.

Prints seconds per call (median of interleaved repeats) and speed ratios `peer_time / our_time` (> 1: we are faster):
  1. CoSwin-T in Swin mode vs timm `swin_tiny_patch4_window7_224` vs Transformers `SwinModel`, forward and
     forward+backward (batch 8, 224 px, fp32);
  2. CoSwin-T in conv mode (Florence's CvT embeddings) vs the same peers;
  3. one FlorenceModel training step (florence-base towers, AdamW) vs `VisionTextDualEncoderModel` built from
     `SwinModel` + `CLIPTextModel` of the same sizes.
Goals: Swin mode >= 1.0x timm, conv mode >= 0.9x timm, training step >= 1.3x the dual encoder.

    python bench/bench_towers.py [--threads 2] [--batch-size 8] [--repeats 5] [--skip-train-step]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    SwinConfig,
    SwinModel,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modeling_florence import FlorenceModel, FlorenceVisionModel, load_preset  # noqa: E402


DEVICE = torch.device("cpu")


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(functions: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, run round-robin so machine drift hits all alike."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize()
            start = time.perf_counter()
            function()
            synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def forward_fn(model, pixel_values):
    model.eval()

    def run():
        with torch.no_grad():
            model(pixel_values)

    return run


def forward_backward_fn(model, pixel_values, output=lambda out: out):
    model.train()

    def run():
        model.zero_grad(set_to_none=True)
        output(model(pixel_values)).float().mean().backward()

    return run


def print_table(title: str, times: dict[str, float], ours: str, goals: dict[str, float]):
    print(f"\n{title}")
    for name, seconds in times.items():
        print(f"  {name:<34} {seconds * 1000:9.1f} ms")
    for peer, goal in goals.items():
        ratio = times[peer] / times[ours]
        verdict = "meets" if ratio >= goal else "BELOW"
        print(f"  ratio {peer} / {ours} = {ratio:.2f}x  (goal >= {goal:.1f}x: {verdict})")


def bench_vision(batch_size: int, repeats: int):
    pixel_values = torch.randn(batch_size, 3, 224, 224, device=DEVICE)
    timm_model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, drop_path_rate=0.0)
    hf_model = SwinModel(SwinConfig(drop_path_rate=0.0))
    swin_mode = FlorenceVisionModel(load_preset("coswin-t", patch_embed="linear", downsample="merge", drop_path_rate=0.0))
    conv_mode = FlorenceVisionModel(load_preset("coswin-t", drop_path_rate=0.0))
    models = {
        "timm swin_tiny": (timm_model, lambda out: out),
        "transformers SwinModel": (hf_model, lambda out: out.last_hidden_state),
        "CoSwin-T swin mode (ours)": (swin_mode, lambda out: out.last_hidden_state),
        "CoSwin-T conv mode (ours)": (conv_mode, lambda out: out.last_hidden_state),
    }
    timm_model.forward = timm_model.forward_features  # the encoder, without the classifier head
    for model, _ in models.values():
        model.to(DEVICE)

    forward = interleaved_medians({n: forward_fn(m, pixel_values) for n, (m, _) in models.items()}, repeats)
    print_table(f"Forward, batch {batch_size}, 224 px, fp32", forward, "CoSwin-T swin mode (ours)",
                {"timm swin_tiny": 1.0, "transformers SwinModel": 1.0})
    print(f"  ratio timm swin_tiny / CoSwin-T conv mode = {forward['timm swin_tiny'] / forward['CoSwin-T conv mode (ours)']:.2f}x"
          " (goal >= 0.9x)")
    backward = interleaved_medians(
        {n: forward_backward_fn(m, pixel_values, out) for n, (m, out) in models.items()}, repeats
    )
    print_table(f"Forward + backward, batch {batch_size}, 224 px, fp32", backward, "CoSwin-T swin mode (ours)",
                {"timm swin_tiny": 1.0, "transformers SwinModel": 1.0})
    print(f"  ratio timm swin_tiny / CoSwin-T conv mode = {backward['timm swin_tiny'] / backward['CoSwin-T conv mode (ours)']:.2f}x"
          " (goal >= 0.9x)")


def dual_encoder_like(florence_config) -> VisionTextDualEncoderModel:
    """Transformers' Swin + CLIP text dual encoder with the tower sizes of a Florence config (the training peer)."""
    vision, text = florence_config.vision_config, florence_config.text_config
    peer_config = VisionTextDualEncoderConfig.from_vision_text_configs(
        SwinConfig(image_size=vision.image_size, patch_size=vision.patch_size, window_size=vision.window_size,
                   embed_dim=vision.embed_dim, depths=vision.depths, num_heads=vision.num_heads, drop_path_rate=0.0),
        CLIPTextConfig(
            hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
            num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
        ),
        projection_dim=florence_config.projection_dim,
    )
    return VisionTextDualEncoderModel(peer_config)


def bench_train_step(batch_size: int, repeats: int):
    """florence-base (CoSwin-B + 512x12 text) vs a Transformers dual encoder of the same sizes."""
    florence_config = load_preset("florence-base")
    florence_config.vision_config.drop_path_rate = 0.0
    florence = FlorenceModel(florence_config)
    peer = dual_encoder_like(florence_config).to(DEVICE)
    florence.to(DEVICE)
    pixel_values = torch.randn(batch_size, 3, 224, 224, device=DEVICE)
    input_ids = torch.randint(1, 49000, (batch_size, 77), device=DEVICE)
    input_ids[:, -1] = 49407
    attention_mask = torch.ones_like(input_ids)

    def step_fn(model):
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def run():
            optimizer.zero_grad(set_to_none=True)
            loss = model(
                input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, return_loss=True
            ).loss
            loss.backward()
            optimizer.step()

        return run

    times = interleaved_medians({"VisionTextDualEncoder (Swin+CLIP)": step_fn(peer), "FlorenceModel (ours)": step_fn(florence)},
                                repeats)
    print_table(f"Training step (AdamW), florence-base sizes, batch {batch_size}, 224 px, 77 tokens, fp32", times,
                "FlorenceModel (ours)", {"VisionTextDualEncoder (Swin+CLIP)": 1.3})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-train-step", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu (the reference setting) or cuda")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, device {DEVICE}")
    bench_vision(args.batch_size, args.repeats)
    if not args.skip_train_step:
        bench_train_step(args.batch_size, max(2, args.repeats // 2))


if __name__ == "__main__":
    main()
