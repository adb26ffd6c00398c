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

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_convert
from transformers import Trainer, TrainingArguments

import modeling_florence as mf
from modeling_florence.data_florence import load_coco_detection
from modeling_florence.evaluation_florence_detection import coco_detection_metrics, object_feature
from modeling_florence.model_card import write_model_card
from modeling_florence.training_florence_detection import (
    DetectionCollator,
    add_colour_shape_classes,
    evaluate_detection,
    predict,
)

logger = logging.getLogger("finetune_detection")
# Colour-shape classes never seen as boxes in open-vocabulary training (one per colour, shapes varied).
# Output fields Trainer leaves out of the predictions it hands to compute_metrics (which reads the other three).
IGNORED_OUTPUTS = ["loss_dict", "feature_maps", "hidden_states", "attentions"]
HELD_OUT_CLASSES = ("red star", "green hexagon", "blue cross", "yellow ring", "purple square", "orange circle",
                    "pink triangle", "cyan diamond")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return parser.parse_args(argv)


def build_detector(args, config_overrides: dict) -> mf.FlorenceForObjectDetection:
    preset = mf.load_preset(args.preset)
    head = {key: getattr(preset, key) for key in ("fpn_channels", "num_dyhead_blocks", "dyhead_norm_groups",
                                                  "anchor_scale", "size_divisibility")}
    head.update(config_overrides)
    if args.base and Path(args.base).is_dir():
        return mf.FlorenceForObjectDetection.from_florence(args.base, open_vocabulary=args.open_vocabulary, **head)
    logger.warning("No pretrained Florence folder (--base %s): the detector starts from random weights", args.base)
    if not args.open_vocabulary:
        preset = mf.FlorenceDetectionConfig(**{**preset.to_dict(), "text_config": None, "projection_dim": None})
    return mf.FlorenceForObjectDetection(mf.FlorenceDetectionConfig(**{**preset.to_dict(), **head}))


def load_data(args):
    """(train, eval) datasets, the class names and the objects' column holding the class index."""
    if args.coco_train:
        train = load_coco_detection(args.coco_train, args.coco_train_images)
        evaluation = load_coco_detection(args.coco_eval, args.coco_eval_images)
        return train, evaluation, object_feature(train, "category").names, "category"
    data = mf.build_detection(num_train=args.num_train, num_validation=args.num_eval, num_test=0,
                              image_size=args.image_size, seed=args.seed)
    if not args.open_vocabulary:
        return data["train"], data["validation"], list(mf.shapes.SHAPES), "category"
    names = [f"{colour} {shape}" for colour in mf.shapes.COLOURS for shape in mf.shapes.SHAPES]
    train, evaluation = (add_colour_shape_classes(data[split], names) for split in ("train", "validation"))
    held_out = {names.index(name) for name in HELD_OUT_CLASSES}
    # classes "never seen as boxes": training images holding any held-out object are dropped
    train = train.filter(lambda row: not held_out & set(row["objects"]["colour_shape"]))
    return train, evaluation, names, "colour_shape"


class OpenVocabularyCollator(DetectionCollator):
    """Adds the (frozen) class-name embeddings of the training classes to every batch."""

    def __init__(self, processor, category_key, class_embeds):
        super().__init__(processor, category_key)
        self.class_embeds = class_embeds

    def __call__(self, rows):
        return {**super().__call__(rows), "class_embeds": self.class_embeds}


def make_compute_metrics(processor):
    """COCO mAP from Trainer's per-batch predictions `(logits, pred_boxes, centerness)` and DETR-format labels."""

    def compute_metrics(evaluation):
        images, annotations, results = [], [], []
        for (logits, boxes, centerness), labels in zip(evaluation.predictions, evaluation.label_ids):
            outputs = {"logits": torch.as_tensor(logits), "pred_boxes": torch.as_tensor(boxes),
                       "centerness": torch.as_tensor(centerness)}
            sizes = [tuple(int(v) for v in np.asarray(label["orig_size"])) for label in labels]
            for label, size, found in zip(labels, sizes,
                                          processor.post_process_object_detection(outputs, target_sizes=sizes)):
                image_id = len(images)
                images.append({"id": image_id, "height": size[0], "width": size[1]})
                height, width = size
                pixels = box_convert(torch.as_tensor(np.asarray(label["boxes"])).reshape(-1, 4), "cxcywh", "xywh")
                pixels = pixels * torch.tensor([width, height, width, height])
                for box, category in zip(pixels.tolist(), np.asarray(label["class_labels"]).tolist()):
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": box,
                                        "category_id": int(category), "area": box[2] * box[3], "iscrowd": 0})
                for box, score, category in zip(found["boxes"].tolist(), found["scores"].tolist(),
                                                 found["labels"].tolist()):
                    results.append({"image_id": image_id, "category_id": category, "score": score,
                                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
        categories = sorted({a["category_id"] for a in annotations} | {r["category_id"] for r in results})
        ground_truth = {"images": images, "annotations": annotations,
                        "categories": [{"id": c, "name": str(c)} for c in categories]}
        return coco_detection_metrics(ground_truth, results)

    return compute_metrics


def draw_predictions(model, processor, dataset, names, path: Path, count: int = 6, **model_inputs) -> None:
    """A PNG of held-out images with their predicted boxes and labels (score >= 0.3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = dataset.select(range(min(count, len(dataset))))
    detections = predict(model, processor, rows, threshold=0.3, **model_inputs)
    figure, axes = plt.subplots(1, len(rows), figsize=(3 * len(rows), 3.3))
    for axis, row, found in zip(np.atleast_1d(axes), rows, detections):
        axis.imshow(row["image"])
        axis.axis("off")
        for (x0, y0, x1, y1), score, label in zip(found["boxes"].tolist(), found["scores"].tolist(),
                                                  found["labels"].tolist()):
            axis.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", linewidth=1.5))
            axis.text(x0, y0 - 1, f"{names[label]} {score:.2f}", color="black", fontsize=6,
                      bbox={"facecolor": "lime", "pad": 0.5, "linewidth": 0})
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    output = Path(args.output)
    train, evaluation, names, category_key = load_data(args)
    model = build_detector(args, {"num_labels": len(names), "id2label": dict(enumerate(names))})
    processor = mf.FlorenceDetectionImageProcessor.from_detection_config(
        model.config, size={"shortest_edge": args.image_size, "longest_edge": args.image_size * 2}
    )

    tokenizer = class_inputs = None
    collator = DetectionCollator(processor, category_key)
    if args.open_vocabulary:
        tokenizer = mf.FlorenceDetectionTokenizer.from_defaults()
        model.set_class_names(names, tokenizer)  # all 64 names: held-out ones get no boxes in training
        class_inputs = {"class_embeds": model.class_embeddings.clone()}
        collator = OpenVocabularyCollator(processor, category_key, model.class_embeddings.clone())

    backbone = [p for n, p in model.named_parameters() if n.startswith("vision_model.") and p.requires_grad]
    head = [p for n, p in model.named_parameters() if not n.startswith("vision_model.") and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": backbone, "lr": args.backbone_learning_rate},
                                   {"params": head, "lr": args.learning_rate}], weight_decay=1e-4)
    training_args = TrainingArguments(
        output_dir=str(output), max_steps=args.max_steps, per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_train_batch_size, learning_rate=args.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=min(50, args.max_steps // 10), max_grad_norm=1.0,
        logging_steps=25, save_steps=args.save_steps, save_total_limit=2, eval_strategy="no",
        remove_unused_columns=False, eval_do_concat_batches=False, dataloader_num_workers=0,
        report_to=[], seed=args.seed, use_cpu=not torch.cuda.is_available(),
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
