"""Fine-tune Video CoSwin for action classification with `transformers.Trainer`, evaluated with multi-view testing.

`make demo-video` runs it on Florence Shapes video; a folder of videos with a csv of labels works the same way
(`--data folder`, read by `load_video_folder`, decoded by `FlorenceVideoProcessor`).

1. `FlorenceVideoModel.from_image_model(--image-model)`: the pretrained image model inflated into Video CoSwin
   (florence-video-tiny windows);
2. zero-shot action accuracy before fine-tuning (class names through the text tower with templates);
3. video-text fine-tuning with the UniCL loss on (clip, caption) pairs ("a red circle moving left"), skipped with
   `--video-text-epochs 0`;
4. `FlorenceForVideoClassification` on that tower, fine-tuned with cross-entropy by `Trainer` on one clip per video;
5. evaluation by `Trainer.evaluate` with multi-view testing as in Video Swin: every held-out video is
   `--eval-clips` temporal clips x `--eval-crops` spatial crops (the video processor's views); the evaluation
   dataset yields all views of a video as one item, the collator passes `num_views`, and the classifier averages
   each video's class probabilities before the loss and the accuracy (`top1`; `single_view_top1` is the centre
   clip alone, for comparison); zero-shot accuracy after fine-tuning and text-video R@1/5/10 both ways over
   clips with distinct captions;
6. saves the classifier + processor to `--output` (`pipeline("video-classification", model=output)`), the
   video-text model + processor to `--output/video-text`, and `eval_results.json`.

Shapes videos are `--video-frames` long (default twice `--num-frames`) and clips take consecutive frames
(`--frame-stride 1`): training sees the centre clip, testing the clips spread over the whole video. Shapes frames
are square, so their 3 crops coincide unless `--resize` is larger than `--image-size`.

    python examples/finetune_video.py --image-model outputs/florence-tiny-shapes --output outputs/florence-video-tiny-shapes
    python examples/finetune_video.py --data folder --video-folder videos/ --labels-csv train.csv --test-csv test.csv \\
        --image-model outputs/florence-tiny-shapes --output outputs/my-video-classifier --image-size 64
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modeling_florence import (  # noqa: E402
    FlorenceForVideoClassification,
    FlorenceModel,
    FlorenceProcessor,
    FlorenceVideoConfig,
    FlorenceVideoModel,
    build_video,
    load_preset,
    text_labels,
)
from modeling_florence.data_florence import load_video_folder  # noqa: E402
from modeling_florence.model_card import write_model_card  # noqa: E402
from modeling_florence.evaluation_florence import TopKAccuracy, format_table  # noqa: E402
from modeling_florence.evaluation_florence_video import (  # noqa: E402
    VideoViewsCollator,
    VideoViewsDataset,
    preprocess_videos,
    video_text_retrieval,
    zero_shot_video_classification,
)
from modeling_florence.shapes import ACTIONS  # noqa: E402


class VideoTextDataset(torch.utils.data.Dataset):
    """Preprocessed clips with tokenised captions and UniCL labels (equal captions are positives)."""

    def __init__(self, pixel_values, text_inputs, captions):
        self.pixel_values, self.text_inputs, self.labels = pixel_values, text_inputs, text_labels(captions)

    def __len__(self):
        return len(self.pixel_values)

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "input_ids": self.text_inputs["input_ids"][index],
                "attention_mask": self.text_inputs["attention_mask"][index], "labels": self.labels[index]}


def load_data(args) -> tuple[dict, list[str]]:
    """`{"train"|"test": {"videos", "labels", "captions"}}` and the class names, from Shapes video or a folder."""
    if args.data == "shapes":
        data = build_video(num_train=args.num_train, num_validation=0, num_test=args.num_test,
                           image_size=args.image_size, num_frames=args.video_frames, seed=args.seed)
        splits = {name: {"videos": data[name]["frames"], "labels": data[name]["label"],
                         "captions": data[name]["caption"]} for name in ("train", "test")}
        return splits, list(ACTIONS)
    if not args.video_folder or not args.labels_csv:
        parser().error("--data folder needs --video-folder and --labels-csv")
    train = load_video_folder(args.video_folder, args.labels_csv)
    names = train.features["label"].names
    if args.test_csv:
        test = load_video_folder(args.video_folder, args.test_csv)
        unknown = sorted(set(test.features["label"].names) - set(names))
        if unknown:
            raise ValueError(f"{args.test_csv} has labels the training csv lacks: {unknown}")
        test_names = test.features["label"].names
        test_labels = [names.index(test_names[label]) for label in test["label"]]
    else:
        split = train.train_test_split(test_size=args.test_fraction, seed=args.seed)
        train, test = split["train"], split["test"]
        test_labels = test["label"]
    splits = {"train": {"videos": train["video"], "labels": train["label"], "captions": train["caption"]},
              "test": {"videos": test["video"], "labels": test_labels, "captions": test["caption"]}}
    return splits, names


def training_args(output: Path, name: str, args, epochs: float, eval_batch_size: int = 8) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output / "trainer" / name), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=eval_batch_size, num_train_epochs=epochs, learning_rate=args.learning_rate,
        weight_decay=0.05, warmup_steps=0.1, lr_scheduler_type="cosine", logging_steps=10, save_strategy="no",
        eval_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=args.seed, max_grad_norm=1.0,
        disable_tqdm=True, remove_unused_columns=False, label_names=["labels"],
    )


def accuracy_metric(num_classes: int):
    """`compute_metrics` for `Trainer`: top-1 (and top-5 with at least 5 classes) accuracy (%) of per-video logits."""
    ks = (1, 5) if num_classes >= 5 else (1,)

    def compute(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        return TopKAccuracy(keep_in_memory=True).compute(
            predictions=logits.tolist(), references=eval_prediction.label_ids.tolist(), ks=ks)

    return compute


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-model", default="outputs/florence-tiny-shapes",
                        help="pretrained FlorenceModel folder to inflate, or 'none' for random florence-video-tiny "
                             "weights (a smoke test: no zero-shot meaning)")
    parser.add_argument("--output", default="outputs/florence-video-tiny-shapes")
    parser.add_argument("--data", default="shapes", choices=["shapes", "folder"])
    parser.add_argument("--video-folder", default=None, help="--data folder: root the csv paths are relative to")
    parser.add_argument("--labels-csv", default=None, help="--data folder: csv with path, label (, caption)")
    parser.add_argument("--test-csv", default=None, help="--data folder: held-out csv (default: a random split)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--num-train", type=int, default=4000, help="Shapes training videos")
    parser.add_argument("--num-test", type=int, default=400, help="Shapes held-out videos")
    parser.add_argument("--image-size", type=int, default=32, help="crop size the model sees")
    parser.add_argument("--resize", type=int, default=None, help="shortest edge before cropping (default: image size)")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--video-frames", type=int, default=None, help="Shapes video length (default 2 x num-frames)")
    parser.add_argument("--frame-stride", type=int, default=None,
                        help="frame interval of a clip (default 1 for Shapes, uniform over the clip's span for "
                             "folders; 0: uniform)")
    parser.add_argument("--eval-clips", type=int, default=2, help="temporal clips per held-out video")
    parser.add_argument("--eval-crops", type=int, default=3, choices=[1, 3], help="spatial crops per clip")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--video-text-epochs", type=float, default=15, help="0 skips the video-text stage")
    parser.add_argument("--classification-epochs", type=float, default=20)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None) -> dict[str, float]:
    args = parser().parse_args(argv)
    args.video_frames = args.video_frames or 2 * args.num_frames
    if args.frame_stride is None:
        args.frame_stride = 1 if args.data == "shapes" else 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start, output = time.perf_counter(), Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    # 1. inflate (or build from scratch for a smoke test)
    windows = load_preset("florence-video-tiny").vision_config.window_sizes
    if args.image_model == "none":
        config = load_preset("florence-video-tiny")
        config.vision_config.image_size, config.vision_config.num_frames = args.image_size, args.num_frames
        model = FlorenceVideoModel(config)
        processor = FlorenceProcessor.from_defaults(image_size=args.image_size, num_frames=args.num_frames)
    else:
        image_model = FlorenceModel.from_pretrained(args.image_model).eval()
        processor = FlorenceProcessor.from_pretrained(args.image_model)
        model = FlorenceVideoModel.from_image_model(image_model, num_frames=args.num_frames, window_sizes=windows,
                                                    image_size=args.image_size)
    video_processor = processor.video_processor
    video_processor.num_frames = args.num_frames
    video_processor.frame_stride = args.frame_stride or None
    video_processor.size = {"shortest_edge": args.resize or args.image_size}
    video_processor.crop_size = {"height": args.image_size, "width": args.image_size}

    # data: one centre view per training video; single-view and multi-view copies of the held-out videos
    data, class_names = load_data(args)
    views = args.eval_clips * args.eval_crops
    train_clips = preprocess_videos(video_processor, data["train"]["videos"])
    test_clips = preprocess_videos(video_processor, data["test"]["videos"])
    test_views = preprocess_videos(video_processor, data["test"]["videos"], args.eval_clips, args.eval_crops)
    train_labels, test_labels = data["train"]["labels"], data["test"]["labels"]
    captions = data["train"]["captions"]
    first = {}
    for index, caption in enumerate(data["test"]["captions"]):
        first.setdefault(caption, index)
    distinct = sorted(first.values())
    print(f"data: {len(train_clips)} training videos, {len(test_clips)} held-out ({views} views each, "
          f"{len(distinct)} distinct captions), {time.perf_counter() - start:.0f} s")

    # 2. zero-shot before fine-tuning
    results = {}
    model.eval()
    results["zero_shot_top1_before"] = zero_shot_video_classification(
        model, processor, test_clips, test_labels, class_names)["top1"]

    # 3. video-text fine-tuning (UniCL)
    if args.video_text_epochs > 0:
        model.train()
        text_inputs = processor(text=list(captions), return_tensors="pt")
        Trainer(model=model, args=training_args(output, "video-text", args, args.video_text_epochs),
                train_dataset=VideoTextDataset(train_clips, text_inputs, captions)).train()
        model.eval()
        print(f"video-text fine-tuning done, {time.perf_counter() - start:.0f} s")

    # 4. classification on the fine-tuned tower
    config = FlorenceVideoConfig(vision_config=model.config.vision_config.to_dict(),
                                 id2label=dict(enumerate(class_names)),
                                 label2id={name: index for index, name in enumerate(class_names)})
    classifier = FlorenceForVideoClassification(config)
    classifier.vision_model.load_state_dict(model.vision_model.state_dict())
    trainer = Trainer(
        model=classifier,
        args=training_args(output, "classification", args, args.classification_epochs,
                           eval_batch_size=max(1, args.batch_size // views)),
        train_dataset=VideoViewsDataset(train_clips, train_labels),
        eval_dataset=VideoViewsDataset(test_views, test_labels, num_views=views),
        data_collator=VideoViewsCollator(),
        compute_metrics=accuracy_metric(len(class_names)),
    )
    trainer.train()
    print(f"classification fine-tuning done, {time.perf_counter() - start:.0f} s")

    # 5. held-out evaluation: multi-view (the Trainer's eval dataset), then the single centre view
    metrics = trainer.evaluate()
    results["top1"] = metrics["eval_top1"]
    results["eval_views"] = float(views)
    results["single_view_top1"] = trainer.evaluate(VideoViewsDataset(test_clips, test_labels),
                                                   metric_key_prefix="single_view")["single_view_top1"]
    results["zero_shot_top1_after"] = zero_shot_video_classification(
        model, processor, test_clips, test_labels, class_names)["top1"]
    if len(distinct) > 1:
        results.update(video_text_retrieval(model, processor, test_clips[distinct],
                                            [data["test"]["captions"][i] for i in distinct]))
        results["retrieval_pairs"] = float(len(distinct))
    results["held_out_videos"] = float(len(test_clips))

    # 6. save
    classifier.save_pretrained(output)
    processor.save_pretrained(output)
    model.save_pretrained(output / "video-text")
    processor.save_pretrained(output / "video-text")
    results["wall_time_s"] = time.perf_counter() - start
    (output / "eval_results.json").write_text(json.dumps(results, indent=2))
    classification = {key: results[key] for key in ("top1", "single_view_top1", "zero_shot_top1_before")}
    write_model_card(output, model_name=output.name, results={"video-classification": classification})
    retrieval = {key: value for key, value in results.items() if "R@" in key or key.startswith("zero_shot")}
    write_model_card(output / "video-text", model_name=f"{output.name}-video-text", results={"video-text": retrieval})
    print(format_table(results))
    print(f"saved to {output} (classifier, pipeline-ready) and {output / 'video-text'} (FlorenceVideoModel)")
    return results


if __name__ == "__main__":
    main()
