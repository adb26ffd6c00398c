"""Fine-tune `FlorenceForImageClassification` with `transformers.Trainer`, starting from the zero-shot classifier.

The head is initialised from the class names' text embeddings of a pretrained two-tower model
(`FlorenceForImageClassification.from_florence`), so evaluation before training is zero-shot accuracy and training
starts from there. Data: Florence Shapes drawn on a background pretraining never saw (`--data shapes-shift`, the
default), plain Shapes, or an image folder (`root/<class>/<image>`), loaded with `datasets` and preprocessed lazily
with `with_transform`. Accuracy comes from the offline `TopKAccuracy` metric.

    python examples/finetune_classification.py --model outputs/florence-tiny-shapes --output outputs/cls-full
    python examples/finetune_classification.py --model outputs/florence-tiny-shapes --output outputs/cls-probe --linear_probe
    python examples/finetune_classification.py --model DIR --data imagefolder --image_folder train/ --test_folder val/ ...

The output folder loads with `AutoModelForImageClassification` and `pipeline("image-classification", model=...)`.
"""

import json

import modeling_florence  # noqa: F401  (registers the Florence model types)
from modeling_florence.recipe_florence import check_arguments
from modeling_florence.training_florence import ArgumentParser, RawDescriptionHelpFormatter
from modeling_florence.training_florence_classification import SHIFT_IDS, run_classification

RANGES = {"num_train": {"low": 1}, "num_test": {"low": 1}, "epochs": {"low": 0, "above": True},
          "batch_size": {"low": 1},
          "learning_rate": {"low": 0, "above": True}, "seed": {"low": 0}}


def parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pretrained two-tower folder (or a classifier with --head)")
    parser.add_argument("--output", required=True, help="folder for the fine-tuned model and finetune_results.json")
    parser.add_argument("--head", default="zero-shot", choices=["zero-shot", "random", "keep"])
    parser.add_argument("--linear_probe", action="store_true", help="freeze the encoder; train the classifier only")
    parser.add_argument("--data", default="shapes-shift", choices=["shapes-shift", "shapes", "imagefolder"])
    parser.add_argument("--shift", default="stripes", choices=sorted(SHIFT_IDS), help="held-out background")
    parser.add_argument("--image_folder", default=None, help="training images, root/<class>/<image>")
    parser.add_argument("--test_folder", default=None, help="evaluation images, root/<class>/<image>")
    parser.add_argument("--num_train", type=int, default=1500)
    parser.add_argument("--num_test", type=int, default=600)
    parser.add_argument("--templates", default=None, help="JSON list of prompt templates (default: shipped set)")
    parser.add_argument("--epochs", type=float, default=15)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=None, help="default 1e-3 (full), 3e-3 (probe)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None):
    args = parser().parse_args(argv)
    check_arguments(args, RANGES)
    mode = "linear_probe" if args.linear_probe else "full"
    learning_rate = args.learning_rate or (3e-3 if args.linear_probe else 1e-3)
    results = run_classification(
        args.model, args.output, mode=mode, head=args.head, data=args.data, shift=args.shift,
        num_train=args.num_train, num_test=args.num_test, image_folder=args.image_folder,
        test_folder=args.test_folder, templates=args.templates, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, learning_rate=learning_rate, seed=args.seed,
    )
    print(json.dumps(results, indent=2))
    print(f"top-1 {results['step0_top1']:.2f} (step 0, {'zero-shot' if args.head == 'zero-shot' else args.head} head)"
          f" -> {results['top1']:.2f} after {mode} fine-tuning ({results['train_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
