"""UniCL pretraining of a Florence two-tower model (one CPU, one GPU, or `accelerate launch` across GPUs/nodes).

    python examples/pretrain_unicl.py --recipe configuration/recipe-unicl-tiny.json --output outputs/florence-tiny
    accelerate launch --config_file configuration/accelerate-ddp.yaml examples/pretrain_unicl.py --recipe ... --output ...
    python examples/pretrain_unicl.py --recipe ... --output ... --resume_from_checkpoint latest

The same entry point is installed as the `florence-pretrain` command; the trainer lives in
`modeling_florence/pretraining_florence.py` so both share one implementation.
"""

from modeling_florence.pretraining_florence import main

if __name__ == "__main__":
    main()
