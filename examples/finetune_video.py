"""Fine-tune Video CoSwin for action classification with `transformers.Trainer`, evaluated with multi-view testing.

`make demo-video` runs it on Florence Shapes video; a folder of videos with a csv of labels works the same way
(`--data folder`, read by `load_video_folder`, decoded by `FlorenceVideoProcessor`).

1. `FlorenceVideoModel.from_florence(--image-model)`: the pretrained image model inflated into Video CoSwin
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

import json
import time
from pathlib import Path

import torch
from transformers import Trainer

from modeling_florence import FlorenceModel, FlorenceProcessor, FlorenceVideoModel, load_preset
from modeling_florence.evaluation_florence import format_table
from modeling_florence.evaluation_florence_video import video_text_retrieval, zero_shot_video_classification
from modeling_florence.model_card import write_model_card
from modeling_florence.recipe_florence import check_arguments
from modeling_florence.training_florence import ArgumentParser, RawDescriptionHelpFormatter
from modeling_florence.training_florence_video import (
    VideoTextDataset,
    VideoViewsCollator,
    VideoViewsDataset,
    accuracy_metric,
    folder_video_data,
    preprocess_videos,
    shapes_video_data,
    video_classifier,
    video_training_arguments,
)

RANGES = {"test_fraction": {"low": 0, "high": 1, "above": True}, "num_train": {"low": 1}, "num_test": {"low": 1},
          "image_size": {"low": 1}, "resize": {"low": 1}, "num_frames": {"low": 1}, "video_frames": {"low": 1},
          "frame_stride": {"low": 0}, "eval_clips": {"low": 1}, "batch_size": {"low": 1},
          "video_text_epochs": {"low": 0}, "classification_epochs": {"low": 0, "above": True},
          "learning_rate": {"low": 0, "above": True}, "threads": {"low": 1}, "seed": {"low": 0}}


def parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
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


def build_models(args):
    """The video-text model (inflated from `--image-model`, or random for a smoke test) and its processor."""
    windows = load_preset("florence-video-tiny").vision_config.window_sizes
    if args.image_model == "none":
        config = load_preset("florence-video-tiny")
        config.vision_config.image_size, config.vision_config.num_frames = args.image_size, args.num_frames
        model = FlorenceVideoModel(config)
        processor = FlorenceProcessor.from_defaults(image_size=args.image_size, num_frames=args.num_frames)
    else:
        image_model = FlorenceModel.from_pretrained(args.image_model).eval()
        processor = FlorenceProcessor.from_pretrained(args.image_model)
        model = FlorenceVideoModel.from_florence(image_model, num_frames=args.num_frames, window_sizes=windows,
                                                    image_size=args.image_size)
    video_processor = processor.video_processor
    video_processor.num_frames = args.num_frames
    video_processor.frame_stride = args.frame_stride or None
    video_processor.size = {"shortest_edge": args.resize or args.image_size}
    video_processor.crop_size = {"height": args.image_size, "width": args.image_size}
    return model, processor


def load_clips(args, video_processor):
    """Data, one centre view per training video, single- and multi-view copies of the held-out videos."""
    if args.data == "shapes":
        data, names = shapes_video_data(args.num_train, args.num_test, args.image_size, args.video_frames, args.seed)
    else:
        data, names = folder_video_data(args.video_folder, args.labels_csv, args.test_csv, args.test_fraction,
                                        args.seed)
    clips = {"train": preprocess_videos(video_processor, data["train"]["videos"]),
             "test": preprocess_videos(video_processor, data["test"]["videos"]),
             "views": preprocess_videos(video_processor, data["test"]["videos"], args.eval_clips, args.eval_crops)}
    return data, names, clips


def evaluate(args, model, processor, trainer, data, names, clips) -> dict:
    """Multi-view (the Trainer's eval dataset) and single-view accuracy, zero-shot after, text-video recall."""
    test_labels = data["test"]["labels"]
    first = {}
    for index, caption in enumerate(data["test"]["captions"]):
        first.setdefault(caption, index)
    distinct = sorted(first.values())
    results = {"top1": trainer.evaluate()["eval_top1"], "eval_views": float(args.eval_clips * args.eval_crops)}
    results["single_view_top1"] = trainer.evaluate(VideoViewsDataset(clips["test"], test_labels),
                                                   metric_key_prefix="single_view")["single_view_top1"]
    results["zero_shot_top1_after"] = zero_shot_video_classification(
        model, processor, clips["test"], test_labels, names)["top1"]
    if len(distinct) > 1:
        results.update(video_text_retrieval(model, processor, clips["test"][distinct],
                                            [data["test"]["captions"][i] for i in distinct]))
        results["retrieval_pairs"] = float(len(distinct))
    results["held_out_videos"] = float(len(clips["test"]))
    return results


def save(output: Path, classifier, model, processor, results) -> None:
    classifier.save_pretrained(output)
    processor.save_pretrained(output)
    model.save_pretrained(output / "video-text")
    processor.save_pretrained(output / "video-text")
    (output / "eval_results.json").write_text(json.dumps(results, indent=2))
    classification = {key: results[key] for key in ("top1", "single_view_top1", "zero_shot_top1_before")}
    write_model_card(output, model_name=output.name, results={"video-classification": classification})
    retrieval = {key: value for key, value in results.items() if "R@" in key or key.startswith("zero_shot")}
    write_model_card(output / "video-text", model_name=f"{output.name}-video-text", results={"video-text": retrieval})


def main(argv=None) -> dict[str, float]:
    args = parser().parse_args(argv)
    check_arguments(args, RANGES)
    args.video_frames = args.video_frames or 2 * args.num_frames
    if args.frame_stride is None:
        args.frame_stride = 1 if args.data == "shapes" else 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start, output = time.perf_counter(), Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    model, processor = build_models(args)
    data, names, clips = load_clips(args, processor.video_processor)
    views = args.eval_clips * args.eval_crops
    print(f"data: {len(clips['train'])} training videos, {len(clips['test'])} held-out ({views} views each), "
          f"{time.perf_counter() - start:.0f} s")
    model.eval()
    before = zero_shot_video_classification(model, processor, clips["test"], data["test"]["labels"], names)["top1"]
    if args.video_text_epochs > 0:  # video-text fine-tuning (UniCL)
        model.train()
        captions = list(data["train"]["captions"])
        arguments = video_training_arguments(output / "trainer" / "video-text", args.batch_size,
                                             args.video_text_epochs, args.learning_rate, args.seed)
        Trainer(model=model, args=arguments, train_dataset=VideoTextDataset(
            clips["train"], processor(text=captions, return_tensors="pt"), captions)).train()
        model.eval()
        print(f"video-text fine-tuning done, {time.perf_counter() - start:.0f} s")
    classifier = video_classifier(model, names)
    trainer = Trainer(
        model=classifier,
        args=video_training_arguments(output / "trainer" / "classification", args.batch_size,
                                      args.classification_epochs, args.learning_rate, args.seed,
                                      eval_batch_size=max(1, args.batch_size // views)),
        train_dataset=VideoViewsDataset(clips["train"], data["train"]["labels"]),
        eval_dataset=VideoViewsDataset(clips["views"], data["test"]["labels"], num_views=views),
        data_collator=VideoViewsCollator(), compute_metrics=accuracy_metric(len(names)),
    )
    trainer.train()
    print(f"classification fine-tuning done, {time.perf_counter() - start:.0f} s")
    results = {"zero_shot_top1_before": before, **evaluate(args, model, processor, trainer, data, names, clips)}
    results["wall_time_s"] = time.perf_counter() - start
    save(output, classifier, model, processor, results)
    print(format_table(results))
    print(f"saved to {output} (classifier, pipeline-ready) and {output / 'video-text'} (FlorenceVideoModel)")
    return results


if __name__ == "__main__":
    main()
