"""Evaluate a saved Florence model: zero-shot top-1/top-5 (prompt-template ensembles) and R@1/5/10 retrieval.

By default on held-out Florence Shapes; on your data with an image folder (one sub-folder per class) and/or a
jsonl/csv of image-text pairs. Prints a table and writes the results as JSON.

    python examples/evaluate_zero_shot.py --model outputs/florence-tiny-shapes
    python examples/evaluate_zero_shot.py --model DIR --image-folder val/ --templates my_templates.json \
        --pairs pairs.jsonl --text-column caption --output results.json
"""

import json
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor

import modeling_florence  # noqa: F401  (registers the Florence model types)
from modeling_florence.data_florence import load_image_folder, load_image_text_pairs
from modeling_florence.evaluation_florence import (
    format_table,
    image_text_retrieval,
    load_templates,
    zero_shot_classification,
)
from modeling_florence.recipe_florence import check_arguments
from modeling_florence.shapes import build_classification, build_pairs
from modeling_florence.training_florence import ArgumentParser, RawDescriptionHelpFormatter


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="folder with the saved model and processor")
    parser.add_argument("--image-folder", default=None, help="classification data: root/<class>/<image>")
    parser.add_argument("--pairs", default=None, help="jsonl or csv of image-text pairs for retrieval")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--templates", default=None, help="JSON list of prompt templates (default: shipped set)")
    parser.add_argument("--limit", type=int, default=1000, help="at most this many evaluation examples per task")
    parser.add_argument("--output", default=None, help="results JSON (default: <model>/eval_results.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    args = parser.parse_args(argv)
    check_arguments(args, {"limit": {"low": 1}})
    output = Path(args.output) if args.output else Path(args.model) / "eval_results.json"
    if output.exists() and not args.overwrite:
        parser.error(f"{output} exists (a fine-tuning run's results?): pass --output elsewhere, or --overwrite")

    model = AutoModel.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    size = processor.image_processor.crop_size["height"]
    templates = load_templates(args.templates)
    if args.image_folder:
        classification = load_image_folder(args.image_folder)
    else:
        classification = build_classification(num_train=0, num_validation=0, num_test=600, image_size=size, seed=1)["test"]
    if args.pairs:
        source = "jsonl" if args.pairs.endswith(".jsonl") else "csv"
        pairs = load_image_text_pairs(source, args.pairs, args.image_column, args.text_column)
    else:
        pairs = build_pairs(num_train=0, num_validation=0, num_test=1000, image_size=size)["test"]

    names = classification.features["label"].names
    subset = classification.select(range(min(args.limit, len(classification))))
    with torch.no_grad():
        results = {f"zero_shot_{k}": v for k, v in zero_shot_classification(
            model, processor, subset["image"], subset["label"], names, templates).items()}
        first = {}
        for index, text in enumerate(pairs["text"]):
            first.setdefault(text, index)
        distinct = pairs.select(sorted(first.values())[: args.limit])
        results.update(image_text_retrieval(model, processor, distinct["image"], distinct["text"]))
    results.update({"classes": float(len(names)), "retrieval_pairs": float(len(distinct))})
    print(format_table(results))
    output.write_text(json.dumps(results, indent=2))
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
