"""Write a Hub model card (README.md with metadata) for a saved Florence model folder.

Architecture facts (towers, sizes, parameter count) are read from the folder, evaluation figures only from a results
JSON (as written by `make demo` or examples/evaluate_zero_shot.py), so a card never claims what was not measured.
The demo, the converters and the Hub export write their cards themselves (`modeling_florence.model_card`):

    python model_cards/generate_model_card.py outputs/florence-tiny-shapes --model-name you/florence-tiny-shapes \
        --results outputs/florence-tiny-shapes/eval_results.json --dataset florence-shapes
"""

import argparse
from pathlib import Path

from modeling_florence.model_card import write_model_card


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--model-name", default=None, help="repo id or name shown in the card (default: folder name)")
    parser.add_argument("--results", type=Path, default=None, help="JSON of evaluation results to report")
    parser.add_argument("--dataset", action="append", default=None, help="dataset the results were measured on")
    parser.add_argument("--base-model", default=None, help="the checkpoint this model was converted or tuned from")
    parser.add_argument("--license", default="apache-2.0")
    args = parser.parse_args(argv)
    path = write_model_card(args.model_dir, model_name=args.model_name, results=args.results, datasets=args.dataset,
                            base_model=args.base_model, license=args.license)
    print(f"Wrote {path}")
    return path


if __name__ == "__main__":
    main()
