"""`make demo-video`: inflate the pretrained image model into Video CoSwin, fine-tune it on Florence Shapes video with
`transformers.Trainer`, evaluate held-out clips and save a pipeline-ready folder.

1. `FlorenceVideoModel.from_image_model(outputs/florence-tiny-shapes)` (florence-video-tiny windows);
2. zero-shot action accuracy before fine-tuning (action names through the text tower with templates);
3. video-text fine-tuning with the UniCL loss on (clip, caption) pairs ("a red circle moving left");
4. a `FlorenceForVideoClassification` on the fine-tuned tower, fine-tuned with cross-entropy over the 7 actions;
5. held-out evaluation: top-1 of the classifier, zero-shot accuracy after fine-tuning, text-video R@1/5/10 both ways
   over clips with distinct captions;
6. saves the classifier + processor to `--output` (`pipeline("video-classification", model=output)`), the
   video-text model + processor to `--output/video-text`, and `eval_results.json`.

    python examples/train_video.py --image-model outputs/florence-tiny-shapes --output outputs/florence-video-tiny-shapes
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
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
from modeling_florence.evaluation_florence import format_table  # noqa: E402
from modeling_florence.evaluation_florence_video import (  # noqa: E402
    video_text_retrieval,
    zero_shot_video_classification,
)
from modeling_florence.shapes import ACTIONS  # noqa: E402


class ClipDataset(torch.utils.data.Dataset):
    """Preprocessed clips with their action labels, and optionally tokenised captions with UniCL labels."""

    def __init__(self, pixel_values, labels, text_inputs=None, captions=None):
        self.pixel_values, self.labels = pixel_values, labels
        self.text_inputs = text_inputs
        self.unicl_labels = text_labels(captions) if captions is not None else None

    def __len__(self):
        return len(self.pixel_values)

    def __getitem__(self, index):
        if self.text_inputs is None:  # classification
            return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}
        return {"pixel_values": self.pixel_values[index], "input_ids": self.text_inputs["input_ids"][index],
                "attention_mask": self.text_inputs["attention_mask"][index], "labels": self.unicl_labels[index]}


def preprocess(processor, split, batch_size: int = 256) -> torch.Tensor:
    """`(N, T, C, H, W)` clips through the video processor (the pipeline's own preprocessing)."""
    chunks = []
    for start in range(0, len(split), batch_size):
        frames = split[start : start + batch_size]["frames"]
        chunks.append(processor.video_processor([[np.asarray(f) for f in clip] for clip in frames])["pixel_values_videos"])
    return torch.cat(chunks)


def training_args(output: Path, name: str, args, epochs: float, learning_rate: float) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output / "trainer" / name), per_device_train_batch_size=args.batch_size,
        num_train_epochs=epochs, learning_rate=learning_rate, weight_decay=0.05, warmup_steps=0.1,
        lr_scheduler_type="cosine", logging_steps=10, save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=args.seed, max_grad_norm=1.0, disable_tqdm=True,
    )


@torch.no_grad()
def classification_top1(model, clips, labels, batch_size: int = 64) -> float:
    model.eval()
    predictions = torch.cat([model(pixel_values=clips[s : s + batch_size]).logits.argmax(-1)
                             for s in range(0, len(clips), batch_size)])
    return 100.0 * (predictions == labels).float().mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-model", default="outputs/florence-tiny-shapes")
    parser.add_argument("--output", default="outputs/florence-video-tiny-shapes")
    parser.add_argument("--num-train", type=int, default=1400)
    parser.add_argument("--num-test", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--video-text-epochs", type=float, default=10)
    parser.add_argument("--classification-epochs", type=float, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start, output = time.perf_counter(), Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    # 1. inflate
    image_model = FlorenceModel.from_pretrained(args.image_model).eval()
    processor = FlorenceProcessor.from_pretrained(args.image_model)
    video_processor = processor.video_processor
    video_processor.num_frames = args.num_frames
    video_processor.size = {"shortest_edge": args.image_size}
    video_processor.crop_size = {"height": args.image_size, "width": args.image_size}
    windows = load_preset("florence-video-tiny").vision_config.window_sizes
    model = FlorenceVideoModel.from_image_model(image_model, num_frames=args.num_frames, window_sizes=windows,
                                                image_size=args.image_size)

    # data: Shapes video, preprocessed once
    data = build_video(num_train=args.num_train, num_validation=0, num_test=args.num_test,
                       image_size=args.image_size, num_frames=args.num_frames, seed=args.seed)
    train_clips, test_clips = preprocess(processor, data["train"]), preprocess(processor, data["test"])
    train_labels, test_labels = torch.tensor(data["train"]["label"]), torch.tensor(data["test"]["label"])
    captions = data["train"]["caption"]
    text_inputs = processor(text=captions, return_tensors="pt")
    first = {}
    for index, caption in enumerate(data["test"]["caption"]):
        first.setdefault(caption, index)
    distinct = sorted(first.values())
    print(f"data: {len(train_clips)} train clips, {len(test_clips)} held-out ({len(distinct)} distinct captions), "
          f"{time.perf_counter() - start:.0f} s")

    # 2. zero-shot before fine-tuning
    results = {}
    model.eval()
    before = zero_shot_video_classification(model, processor, test_clips, test_labels.tolist(), ACTIONS)
    results["zero_shot_top1_before"] = before["top1"]

    # 3. video-text fine-tuning (UniCL)
    model.train()
    Trainer(model=model, args=training_args(output, "video-text", args, args.video_text_epochs, args.learning_rate),
            train_dataset=ClipDataset(train_clips, train_labels, text_inputs, captions)).train()
    model.eval()
    print(f"video-text fine-tuning done, {time.perf_counter() - start:.0f} s")

    # 4. classification on the fine-tuned tower
    config = FlorenceVideoConfig(vision_config=model.config.vision_config.to_dict(),
                                 id2label=dict(enumerate(ACTIONS)), label2id={a: i for i, a in enumerate(ACTIONS)})
    classifier = FlorenceForVideoClassification(config)
    classifier.vision_model.load_state_dict(model.vision_model.state_dict())
    Trainer(model=classifier,
            args=training_args(output, "classification", args, args.classification_epochs, args.learning_rate),
            train_dataset=ClipDataset(train_clips, train_labels)).train()
    print(f"classification fine-tuning done, {time.perf_counter() - start:.0f} s")

    # 5. held-out evaluation
    results["top1"] = classification_top1(classifier, test_clips, test_labels)
    after = zero_shot_video_classification(model, processor, test_clips, test_labels.tolist(), ACTIONS)
    results["zero_shot_top1_after"] = after["top1"]
    results.update(video_text_retrieval(model, processor, test_clips[distinct],
                                        [data["test"]["caption"][i] for i in distinct]))
    results["retrieval_pairs"] = float(len(distinct))
    results["held_out_clips"] = float(len(test_clips))

    # 6. save
    classifier.save_pretrained(output)
    processor.save_pretrained(output)
    model.save_pretrained(output / "video-text")
    processor.save_pretrained(output / "video-text")
    results["wall_time_s"] = time.perf_counter() - start
    (output / "eval_results.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"saved to {output} (classifier, pipeline-ready) and {output / 'video-text'} (FlorenceVideoModel)")


if __name__ == "__main__":
    main()
