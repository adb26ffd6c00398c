"""Worker of tests/test_pretraining_fsdp.py: a few UniCL steps of florence-tiny on a fixed global batch.

Run plainly (one process, the whole batch) or under `accelerate launch --config_file configuration/accelerate-fsdp.yaml`
(FSDP2, each process its slice of the batch). Writes, from the main process, `losses.json` (global loss per step) and
`grads-<step>.safetensors` (full, unsharded gradients). `--save-after N` saves a sharded checkpoint after step N;
`--resume DIR --start N` loads one and continues from step N + 1.

    python tests/fsdp_florence_worker.py --output DIR [--steps 3] [--save-after 2] [--resume DIR --start 2]
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modeling_florence import FlorenceModel, load_preset  # noqa: E402

GLOBAL_BATCH = 8


def global_batch(step: int, config) -> dict:
    """The same global batch on every process, different each step."""
    generator = torch.Generator().manual_seed(1000 + step)
    size = config.vision_config.image_size
    return {"pixel_values": torch.randn(GLOBAL_BATCH, 3, size, size, generator=generator),
            "input_ids": torch.randint(1, 1000, (GLOBAL_BATCH, 12), generator=generator),
            "attention_mask": torch.ones(GLOBAL_BATCH, 12, dtype=torch.long)}


def full_gradients(model) -> dict[str, torch.Tensor]:
    """Unsharded gradients by parameter name (DTensor shards gathered); collective, so every process calls it."""
    grads = {}
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            grad = parameter.grad
            grads[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().clone()
    return grads


def shard_like_the_yaml(model):
    """FSDP2 as configuration/accelerate-fsdp.yaml asks (what Accelerate's `fsdp2_prepare_model` does on GPUs):
    `fully_shard` each FlorenceVisionLayer / FlorenceTextLayer, then the root, resharding after forward.

    fully_shard refuses scalar parameters and FlorenceModel.logit_scale is one (so Accelerate's FSDP2 path fails
    on it too): it stays replicated (`ignored_params`) and `reduce_replicated_grads` averages its gradient."""
    from torch.distributed.fsdp import fully_shard

    plan = yaml_fsdp_config()
    layer_names = set(plan["fsdp_transformer_layer_cls_to_wrap"].split(","))
    for module in model.modules():
        if type(module).__name__ in layer_names:
            fully_shard(module, reshard_after_forward=plan["fsdp_reshard_after_forward"])
    scalars = {parameter for parameter in model.parameters() if parameter.dim() == 0}
    return fully_shard(model, reshard_after_forward=plan["fsdp_reshard_after_forward"], ignored_params=scalars)


def reduce_replicated_grads(model) -> None:
    """Average the gradients of the parameters FSDP left replicated (the scalars), as DDP would."""
    import torch.distributed as dist

    for parameter in model.parameters():
        if parameter.dim() == 0 and parameter.grad is not None and dist.is_initialized():
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.AVG)


def yaml_fsdp_config() -> dict:
    import yaml

    path = Path(__file__).resolve().parent.parent / "configuration" / "accelerate-fsdp.yaml"
    plan = yaml.safe_load(path.read_text())["fsdp_config"]
    if plan["fsdp_version"] != 2 or plan["fsdp_state_dict_type"] != "SHARDED_STATE_DICT":
        raise ValueError(f"{path} no longer asks for FSDP2 with sharded checkpoints; update this test")
    return plan


def save_sharded(model, optimizer, folder: Path) -> None:
    """Each process writes its own shards (torch.distributed.checkpoint), as SHARDED_STATE_DICT does."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))


def load_sharded(model, optimizer, folder: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--save-after", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--start", type=int, default=0)
    args = parser.parse_args(argv)
    output = Path(args.output)
    set_seed(0)
    config = load_preset("florence-tiny")
    model = FlorenceModel(config)
    accelerator = Accelerator()
    if accelerator.num_processes > 1:
        model = shard_like_the_yaml(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    if args.resume:
        load_sharded(model, optimizer, args.resume)
    rank, world = accelerator.process_index, accelerator.num_processes
    share = GLOBAL_BATCH // world
    losses = {}
    for step in range(args.start + 1, args.steps + 1):
        batch = {k: v[rank * share:(rank + 1) * share].to(accelerator.device)
                 for k, v in global_batch(step, config).items()}
        loss = model(**batch, return_loss=True).loss
        loss.backward()
        reduce_replicated_grads(model)
        grads = full_gradients(model)
        losses[step] = accelerator.reduce(loss.detach(), reduction="mean").item()
        if accelerator.is_main_process:
            save_file(grads, str(output / f"grads-{step}.safetensors"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == args.save_after:
            save_sharded(model, optimizer, output / "checkpoint")
    if accelerator.is_main_process:
        (output / "losses.json").write_text(json.dumps(losses))
        sharded = sum(type(parameter).__name__ == "DTensor" for parameter in model.parameters())
        accelerator.print(f"distributed_type={accelerator.distributed_type} processes={world} "
                          f"sharded_parameters={sharded}")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
