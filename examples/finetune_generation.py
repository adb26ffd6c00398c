"""Fine-tune Florence-2 (`FlorenceForConditionalGeneration`) with `transformers.Seq2SeqTrainer`, scored per task.

    # a tiny encoder-decoder on the `make demo` model's CoSwin tower, Florence Shapes multi-task (make demo-generation)
    python examples/finetune_generation.py --base outputs/florence-tiny-shapes \
        --output outputs/florence-generation-tiny-shapes
    # a Florence-2 folder (ours, or florence-community/Florence-2-base) fine-tuned with LoRA on a COCO detection json
    python examples/finetune_generation.py --model FOLDER --lora --data coco --annotations A.json --images DIR \
        --output OUT
    # evaluate a folder without training
    python examples/finetune_generation.py --model outputs/florence-generation-tiny-shapes --eval-only --output OUT

Data: Florence Shapes rows of every task (`build_florence2`), a COCO detection json (`<OD>` rows) or a jsonl of
(image, prompt, answer). Evaluation generates on held-out rows and scores each task with the Florence-2 paper's
metric: COCO mAP of the generated boxes (`<OD>`), accuracy at IoU >= 0.5 (phrase grounding), mIoU of the rasterised
polygons (referring segmentation), accuracy (region to category), exact match and CIDEr (captions), VQA accuracy and
ANLS (questions). Saves the model (LoRA merged in, so `pipeline("image-text-to-text")` serves it; the adapter in
`adapter/`), its processor, `eval_results.json` and a model card.
"""

import json
import time
from pathlib import Path

import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

import modeling_florence as mf
from modeling_florence.model_card import write_model_card
from modeling_florence.peft_florence import default_lora_config
from modeling_florence.recipe_florence import check_arguments
from modeling_florence.shapes import SHAPES
from modeling_florence.training_florence import (
    ArgumentParser,
    RawDescriptionHelpFormatter,
    resolve_bf16,
    training_arguments,
)
from modeling_florence.training_florence_generation import (
    GenerationCollator,
    build_generation_model,
    generation_data,
    make_compute_metrics,
)

RANGES = {"num_train": {"low": 1}, "num_test": {"low": 1}, "image_size": {"low": 16}, "steps": {"low": 1},
          "batch_size": {"low": 1}, "learning_rate": {"low": 0, "above": True}, "warmup_steps": {"low": 0},
          "num_beams": {"low": 1}, "max_new_tokens": {"low": 1}, "lora_r": {"low": 1}, "seed": {"low": 0}}
# What Trainer.evaluate adds to compute_metrics' figures.
TRAINER_KEYS = ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time")
# The demo's goals on held-out Shapes rows (issue 23).
GOALS = {"od_AP50": 0.60, "caption_to_phrase_grounding_accuracy": 0.80,
         "referring_expression_segmentation_miou": 0.60, "region_to_category_accuracy": 0.90,
         "caption_exact_match": 0.80, "vqa_accuracy": 0.80}


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--base", help="two-tower Florence folder: a new encoder-decoder on its CoSwin tower")
    source.add_argument("--model", help="Florence-2 folder (ours or a florence-community one) with its processor")
    parser.add_argument("--output", required=True)
    parser.add_argument("--data", choices=("shapes", "coco", "jsonl"), default="shapes")
    parser.add_argument("--annotations"), parser.add_argument("--images"), parser.add_argument("--jsonl")
    parser.add_argument("--num-train", type=int, default=14000)
    parser.add_argument("--num-test", type=int, default=350)
    parser.add_argument("--image-size", type=int, default=96, help="Shapes image size and model input resolution")
    parser.add_argument("--vision-feature-stages", type=int, nargs="+", default=[3, 4],
                        help="CoSwin stages whose tokens enter the encoder (--base)")
    parser.add_argument("--train-vision-tower", action="store_true", help="train the CoSwin tower too (--base)")
    parser.add_argument("--steps", type=int, default=1400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default 1e-3 for a new encoder-decoder (--base), 1e-4 full / 5e-4 LoRA (--model)")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--lora", action="store_true", help="LoRA (default_lora_config) instead of full fine-tuning")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--eval-only", action="store_true", help="evaluate --model without training")
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs, CPUs with bf16 units)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.eval_only and not args.model:
        parser.error("--eval-only evaluates a trained folder: pass --model FOLDER")
    if args.learning_rate is None:
        args.learning_rate = 1e-3 if args.base else 5e-4 if args.lora else 1e-4
    check_arguments(args, RANGES)
    args.bf16 = resolve_bf16(args.bf16)
    return args


def model_and_processor(args):
    if args.model:
        return (mf.FlorenceForConditionalGeneration.from_pretrained(args.model),
                mf.FlorenceGenerationProcessor.from_pretrained(args.model))
    tokenizer = mf.FlorenceGenerationTokenizer.from_defaults()
    model = build_generation_model(args.base, tokenizer, vision_feature_stages=args.vision_feature_stages,
                                   freeze_vision_tower=not args.train_vision_tower)
    size = args.image_size
    processor = mf.FlorenceGenerationProcessor.from_defaults(image_size=size,
                                                             image_seq_length=model.num_image_tokens(size, size))
    return model, processor


def trainer_arguments(args, output: Path) -> Seq2SeqTrainingArguments:
    return training_arguments(
        output / "trainer", arguments_class=Seq2SeqTrainingArguments, max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, learning_rate=args.learning_rate,
        weight_decay=0.01, warmup_steps=args.warmup_steps, lr_scheduler_type="cosine",
        logging_steps=max(1, args.steps // 20), save_strategy="no", disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), seed=args.seed, max_grad_norm=1.0, bf16=args.bf16,
        predict_with_generate=True, generation_num_beams=args.num_beams,
    )


def print_table(metrics: dict, train_seconds: float, wall: float, output: Path) -> None:
    print("\nheld-out Florence-2 tasks (generated text, parsed and scored)\n")
    print(f"{'metric':<42} | {'value':>7} | {'goal':>5}")
    print(f"{'-' * 42}-|---------|------")
    for name, value in sorted(metrics.items()):
        goal = GOALS.get(name)
        mark = "" if goal is None else f" {goal:5.2f} {'met' if value >= goal else 'MISSED'}"
        print(f"{name:<42} | {value:7.3f} |{mark}")
    print(f"\ntraining {train_seconds:.0f}s, wall {wall:.0f}s; saved model and processor to {output}")


def save(model, processor, output: Path, lora: bool):
    if lora:
        model.save_pretrained(output / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(output)
    processor.save_pretrained(output)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    output = Path(args.output)
    train, test = generation_data(args.data, args.num_train, args.num_test, args.image_size, args.seed,
                                  annotations=args.annotations, images=args.images, jsonl=args.jsonl)
    model, processor = model_and_processor(args)
    if args.lora:
        from peft import get_peft_model

        model = get_peft_model(model, default_lora_config(model, r=args.lora_r))
    print(f"{len(train)} training / {len(test)} held-out rows, tasks {sorted(set(test['task']))} "
          f"({time.perf_counter() - start:.0f}s)")
    collator = GenerationCollator(processor, model.config.text_config.max_position_embeddings)
    categories = list(SHAPES) if args.data == "shapes" else None
    trainer = Seq2SeqTrainer(model=model, args=trainer_arguments(args, output), train_dataset=train, eval_dataset=test,
                             data_collator=collator, processing_class=processor.tokenizer,
                             compute_metrics=make_compute_metrics(test, processor, categories))
    train_start = time.perf_counter()
    if not args.eval_only:
        trainer.train()
    train_seconds = time.perf_counter() - train_start
    raw = trainer.evaluate(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    metrics = {key.removeprefix("eval_"): value for key, value in raw.items()
               if key.removeprefix("eval_") not in TRAINER_KEYS}
    save(model, processor, output, args.lora)
    wall = time.perf_counter() - start
    results = {"generation": metrics, "eval_loss": raw.get("eval_loss"), "train_seconds": round(train_seconds, 1),
               "wall_seconds": round(wall, 1)}
    (output / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_model_card(output, model_name=output.name, results={"generation": metrics})
    print_table(metrics, train_seconds, wall, output)
    return results


if __name__ == "__main__":
    main()
