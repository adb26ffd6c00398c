"""Write a Hub model card (README.md with metadata) for a saved Florence model folder.

Architecture facts (towers, sizes, parameter count) are read from the folder, evaluation figures only from a results
JSON (as written by `make demo` or examples/evaluate_zero_shot.py), so a card never claims what was not measured;
counts in it (classes, retrieval pairs) are shown as the evaluation's setup, not published as metrics. A LoRA adapter
folder gets an adapter card (pass --base-model when its adapter_config.json does not name the base model).
The demo, the converters and the Hub export write their cards themselves (`modeling_florence.model_card`):

    python model_cards/generate_model_card.py outputs/florence-tiny-shapes --model-name you/florence-tiny-shapes \
        --results outputs/florence-tiny-shapes/eval_results.json --dataset florence-shapes
"""

import argparse
from pathlib import Path

from modeling_florence.model_card import write_finetune_card


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--model-name", default=None, help="repo id or name shown in the card (default: folder name)")
    parser.add_argument("--results", type=Path, default=None, help="JSON of evaluation results to report")
    parser.add_argument("--dataset", action="append", default=None, help="dataset the results were measured on")
    parser.add_argument("--base-model", default=None, help="the checkpoint this model was converted or tuned from")
    parser.add_argument("--license", default="apache-2.0")
    args = parser.parse_args(argv)
    # A PEFT adapter folder (adapter_config.json) gets an adapter card naming its base model; any other the model's.
    path = write_finetune_card(args.model_dir, results=args.results, base_model=args.base_model,
                               model_name=args.model_name, datasets=args.dataset, license=args.license)
    print(f"Wrote {path}")
    return path


if __name__ == "__main__":
    main()
