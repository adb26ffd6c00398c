"""Images/s of `florence-vqa-base` (CoSwin-B + 768-wide text tower + 6 METER co-attention layers per stream) against
Transformers' `BridgeTowerModel` (ViT-B/16 + RoBERTa-base + 6 cross-modal layers per stream, 768 wide, 12 heads)
with the same VQA head, on the same inputs, in one process: inference (forward) and a training step (forward, BCE
loss, backward, AdamW). Printed as Florence / BridgeTower ratios (> 1 = Florence faster).

    python bench/bench_vqa.py [--image-size 224] [--batch 4] [--text-length 16] [--repeats 3] [--threads 2]
"""

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_towers import interleaved_medians  # noqa: E402

from modeling_florence import FlorenceForVQA, load_preset  # noqa: E402
from modeling_florence.modeling_florence_vqa import vqa_loss  # noqa: E402

NUM_ANSWERS = 3129


class BridgeTowerForVQA(nn.Module):
    """BridgeTowerModel with METER's VQA head on its concatenated pooler (Transformers ships no VQA head for it)."""

    def __init__(self, image_size: int):
        super().__init__()
        from transformers import BridgeTowerConfig, BridgeTowerModel

        config = BridgeTowerConfig(
            hidden_size=768, num_attention_heads=12, num_hidden_layers=6,
            text_config={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                         "intermediate_size": 3072, "vocab_size": 50265, "max_position_embeddings": 514},
            vision_config={"hidden_size": 768, "num_hidden_layers": 12, "patch_size": 16, "image_size": image_size},
        )
        self.bridgetower = BridgeTowerModel(config)
        width = 2 * config.hidden_size
        self.vqa_head = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(),
                                      nn.Linear(width, NUM_ANSWERS))

    def forward(self, pixel_values, input_ids, attention_mask, labels=None):
        pooled = self.bridgetower(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                                  pixel_mask=torch.ones_like(pixel_values[:, 0], dtype=torch.long)).pooler_output
        logits = self.vqa_head(pooled)
        return logits if labels is None else vqa_loss(logits, labels)


def florence_step(model):
    def forward(pixel_values, input_ids, attention_mask, labels=None):
        output = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return output.logits if labels is None else output.loss

    return forward


def runners(forward, parameters, inputs, labels):
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)

    def infer():
        with torch.no_grad():
            forward(**inputs)

    def train():
        optimizer.zero_grad(set_to_none=True)
        forward(**inputs, labels=labels).backward()
        optimizer.step()

    return infer, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text-length", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    florence = FlorenceForVQA(load_preset("florence-vqa-base", num_labels=NUM_ANSWERS,
                                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                          vision_config={"drop_path_rate": 0.0})).to(device).train()
    peer = BridgeTowerForVQA(args.image_size).to(device).train()
    count = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in (("florence", florence), ("peer", peer))}

    generator = torch.Generator().manual_seed(0)
    inputs = {
        "pixel_values": torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator).to(device),
        "input_ids": torch.randint(3, 49000, (args.batch, args.text_length), generator=generator).to(device),
        "attention_mask": torch.ones(args.batch, args.text_length, dtype=torch.long, device=device),
    }
    inputs["input_ids"][:, 0] = 0
    labels = (torch.rand(args.batch, NUM_ANSWERS, generator=generator) < 0.002).float().to(device)

    florence_infer, florence_train = runners(florence_step(florence), florence.parameters(), inputs, labels)
    peer_infer, peer_train = runners(peer, peer.parameters(), inputs, labels)
    print(f"florence-vqa-base {count['florence']:.0f}M parameters vs BridgeTower-base {count['peer']:.0f}M, "
          f"{args.image_size} px, batch {args.batch}, {args.text_length} text tokens, {device}, "
          f"{torch.get_num_threads()} threads")
    for phase, functions in (("inference", {"florence": florence_infer, "bridgetower": peer_infer}),
                             ("training step", {"florence": florence_train, "bridgetower": peer_train})):
        seconds = interleaved_medians(functions, args.repeats)
        rates = {name: args.batch / value for name, value in seconds.items()}
        print(f"  {phase:<14} florence {rates['florence']:8.2f} images/s | bridgetower {rates['bridgetower']:8.2f} "
              f"images/s | ratio {rates['florence'] / rates['bridgetower']:.2f}x")


if __name__ == "__main__":
    main()
