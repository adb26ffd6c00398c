"""GPU checks that CPU CI cannot run: bf16 + SDPA vs eager agreement, bf16 training step, and memory.

    python bench/gpu_check.py   (needs CUDA)
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modeling_florence import FlorenceModel, load_preset  # noqa: E402


def main():
    assert torch.cuda.is_available(), "this check needs a CUDA device"
    torch.manual_seed(0)
    # One config object per model: the attention implementation is recorded on the config.
    models = {
        impl: FlorenceModel._from_config(load_preset("florence-base"), attn_implementation=impl)
        for impl in ("eager", "sdpa")
    }
    for impl, model in models.items():
        assert model.vision_model.config._attn_implementation == impl, model.vision_model.config._attn_implementation
    models["sdpa"].load_state_dict(models["eager"].state_dict())
    pixel_values = torch.randn(16, 3, 224, 224, device="cuda")
    input_ids = torch.randint(1, 49000, (16, 77), device="cuda")
    input_ids[:, 20] = 49407
    attention_mask = torch.ones_like(input_ids)
    attention_mask[8:, 21:] = 0  # half the batch padded, half not: both text paths
    outputs = {}
    for impl, model in models.items():
        model.to("cuda", torch.bfloat16).eval()
        with torch.no_grad():
            outputs[impl] = model(input_ids=input_ids, pixel_values=pixel_values.bfloat16(), attention_mask=attention_mask)
    for key in ("image_embeds", "text_embeds"):
        diff = (outputs["eager"][key].float() - outputs["sdpa"][key].float()).abs().max().item()
        print(f"bf16 cuda eager vs sdpa max |diff| {key}: {diff:.4f}")
        assert diff < 0.05, diff
    model = models["sdpa"].train()
    model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    torch.cuda.reset_peak_memory_stats()
    for step in range(3):
        loss = model(input_ids=input_ids, pixel_values=pixel_values.bfloat16(), attention_mask=attention_mask,
                     return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"bf16 train step {step}: loss {loss.item():.4f}")
    assert torch.isfinite(loss)
    print(f"peak memory with gradient checkpointing: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
