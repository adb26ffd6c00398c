"""Fine-tune FlorenceForObjectDetection with `transformers.Trainer`, evaluate COCO mAP, save the detector.

    # closed set (8 shape classes) on Florence Shapes detection, from a pretrained two-tower folder:
    python examples/finetune_detection.py --base outputs/florence-tiny-shapes --output outputs/detector
    # open vocabulary: "<colour> <shape>" names through the text tower; some classes never seen as boxes in training
    python examples/finetune_detection.py --base outputs/florence-tiny-shapes --open-vocabulary --output outputs/ov
    # any COCO json + image folder (the existing loader), resume with Trainer:
    python examples/finetune_detection.py --coco-train train.json --coco-train-images imgs/ --coco-eval val.json \\
        --coco-eval-images imgs/ --output outputs/coco --resume_from_checkpoint latest

Without `--base` (or when the folder is missing) the detector starts from random weights (a warning says so).
Progress bar, checkpoints (`--save_steps`) and resume come from Trainer; `compute_metrics` gives COCO AP, AP50, AP75
and AP small/medium/large (pycocotools). The output folder holds the model, image processor (and tokenizer for open
vocabulary), `eval_results.json`, a model card and `predictions.png` (boxes drawn on held-out images).
"""

import json
import logging
import time
from pathlib import Path

import torch
from transformers import Trainer

import modeling_florence as mf
from modeling_florence.model_card import write_model_card
from modeling_florence.recipe_florence import check_arguments
from modeling_florence.training_florence import (
    ArgumentParser,
    RawDescriptionHelpFormatter,
    training_arguments,
)
from modeling_florence.training_florence_detection import (
    HELD_OUT_CLASSES,
    IGNORED_OUTPUTS,
    DetectionCollator,
    OpenVocabularyCollator,
    build_detector,
    detection_data,
    detection_optimizer,
    draw_predictions,
    evaluate_detection,
    make_compute_metrics,
)

RANGES = {"image_size": {"low": 1}, "num_train": {"low": 1}, "num_eval": {"low": 1}, "max_steps": {"low": 1},
          "per_device_train_batch_size": {"low": 1}, "learning_rate": {"low": 0, "above": True},
          "backbone_learning_rate": {"low": 0}, "save_steps": {"low": 1}, "seed": {"low": 0}}


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None, help="a pretrained FlorenceModel folder (e.g. outputs/florence-tiny-shapes)")
    parser.add_argument("--preset", default="florence-detection-tiny", help="detector preset (head sizes, ATSS settings)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--open-vocabulary", action="store_true", help="colour-shape names through the text tower")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-eval", type=int, default=200)
    parser.add_argument("--coco-train", default=None)
    parser.add_argument("--coco-train-images", default=None)
    parser.add_argument("--coco-eval", default=None)
    parser.add_argument("--coco-eval-images", default=None)
    parser.add_argument("--max_steps", type=int, default=900)
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--backbone_learning_rate", type=float, default=2e-4)
    parser.add_argument("--save_steps", type=int, default=200)
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_arguments(args, RANGES)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    output = Path(args.output)
    train, evaluation, names, category_key = detection_data(args)
    model = build_detector(args, {"num_labels": len(names), "id2label": dict(enumerate(names))})
    # The normalisation of the --base folder the tower came from (a Florence-2 folder's ImageNet mean/std).
    processor = mf.FlorenceDetectionImageProcessor.from_detection_config(
        model.config, source=args.base, size={"shortest_edge": args.image_size, "longest_edge": args.image_size * 2}
    )

    tokenizer = class_inputs = None
    collator = DetectionCollator(processor, category_key)
    if args.open_vocabulary:
        tokenizer = mf.FlorenceDetectionTokenizer.from_defaults()
        model.set_class_names(names, tokenizer)  # all 64 names: held-out ones get no boxes in training
        class_inputs = {"class_embeds": model.class_embeddings.clone()}
        collator = OpenVocabularyCollator(processor, category_key, model.class_embeddings.clone())

    optimizer = detection_optimizer(model, args.learning_rate, args.backbone_learning_rate)
    training_args = training_arguments(
        output, max_steps=args.max_steps, per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_train_batch_size, learning_rate=args.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=min(50, args.max_steps // 10), max_grad_norm=1.0,
        logging_steps=25, save_steps=args.save_steps, save_total_limit=2, eval_strategy="no",
        eval_do_concat_batches=False, seed=args.seed,
        ddp_find_unused_parameters=args.open_vocabulary,  # the text tower sits out when class_embeds are given use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                      data_collator=collator, compute_metrics=make_compute_metrics(processor),
                      optimizers=(optimizer, None))
    resume = args.resume_from_checkpoint
    start = time.time()
    trainer.train(resume_from_checkpoint=True if resume == "latest" else resume)
    train_seconds = time.time() - start

    if args.open_vocabulary:
        held_out = [names.index(name) for name in HELD_OUT_CLASSES]
        seen = [index for index in range(len(names)) if index not in held_out]
        metrics = {f"seen_{k}": v for k, v in evaluate_detection(
            model, processor, evaluation, category_key, names, category_ids=seen, **class_inputs).items()}
        metrics.update({f"held_out_{k}": v for k, v in evaluate_detection(
            model, processor, evaluation, category_key, names, category_ids=held_out, **class_inputs).items()})
    else:
        metrics = trainer.evaluate(ignore_keys=IGNORED_OUTPUTS)
        metrics = {k.removeprefix("eval_"): v for k, v in metrics.items() if not k.endswith(("runtime", "per_second"))}
    metrics["train_seconds"] = round(train_seconds, 1)

    model.save_pretrained(output)
    processor.save_pretrained(output)
    if tokenizer is not None:
        tokenizer.save_pretrained(output)
    (output / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_model_card(output, model_name=output.name,
                     results={k: v for k, v in metrics.items() if k.rsplit("_", 1)[-1] in ("AP", "AP50", "AP75")})
    draw_predictions(model, processor, evaluation, names, output / "predictions.png", **(class_inputs or {}))
    print("metric".ljust(20), "| value")
    for key, value in metrics.items():
        print(key.ljust(20), f"| {value:.4f}" if isinstance(value, float) else f"| {value}")
    return metrics


if __name__ == "__main__":
    main()
