"""Fine-tune Florence's METER adapter for VQA with `transformers.Trainer`.

    python examples/finetune_vqa.py --florence outputs/florence-tiny-shapes --output outputs/florence-vqa-tiny-shapes
    python examples/finetune_vqa.py --data vqav2 --questions q.json --annotations a.json --images DIR ...
    python examples/finetune_vqa.py ... --pretrain-steps 300      # ITM + MLM fusion pretraining first

Builds `FlorenceForVQA` on the towers of a pretrained `FlorenceModel` (`--florence`; without it the towers start
from their init), its answer vocabulary from the training answers (top N, VQA-normalised), trains with BCE on soft
scores, evaluates the official VQA accuracy overall and per question type on held-out questions, reports a blind
baseline (the best a model that never looks at the image can do: the most frequent training answer of each
question), and saves the model, its processor, `eval_results.json` and a model card.
"""

import json
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
    resolve_bf16,
    training_arguments,
)
from modeling_florence.training_florence_vqa import (
    FUSION_FIELDS,
    MLMCollator,
    attention_kernels,
    blind_baseline,
    cache_image_features,
    feature_collator,
    make_compute_metrics,
    optimizer_for,
    preprocess,
    trim_padding,
    vqa_data,
)

RANGES = {"num_train": {"low": 1}, "num_test": {"low": 1}, "shapes_image_size": {"low": 1}, "image_size": {"low": 1},
          "top_answers": {"low": 1}, "steps": {"low": 1}, "batch_size": {"low": 1},
          "learning_rate": {"low": 0, "above": True}, "tower_lr_scale": {"low": 0}, "image_tower_lr_scale": {"low": 0},
          "pretrain_steps": {"low": 0}, "mask_token_id": {"low": 0}, "eval_every": {"low": 0}, "seed": {"low": 0}}


def vqa_training_arguments(args, output: Path, steps: int, eval_every: int = 0):
    return training_arguments(
        output, max_steps=steps, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=256,
        learning_rate=args.learning_rate, weight_decay=0.01, warmup_steps=int(0.1 * steps), lr_scheduler_type="cosine",
        logging_steps=max(1, steps // 10), save_strategy="no", eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every or None, use_cpu=not torch.cuda.is_available(), seed=args.seed, disable_tqdm=True,
        max_grad_norm=1.0, bf16=args.bf16,
    )


def pretrain_fusion(args, model_kwargs, train_pairs, output: Path, tokenizer):
    """ITM (hard negatives) + MLM on the training images paired with their questions; returns the folder."""
    if args.florence:
        model = mf.FlorenceForVisionLanguagePretraining.from_florence(args.florence, **model_kwargs)
    else:
        model = mf.FlorenceForVisionLanguagePretraining(mf.load_preset(args.preset, **model_kwargs))
    model.config.mask_token_id = args.mask_token_id
    model.set_attn_implementation(attention_kernels(args.attn_implementation))
    collator = MLMCollator(args.mask_token_id, model.config.text_config.vocab_size,
                           (tokenizer.bos_token_id, tokenizer.eos_token_id))
    trainer = Trainer(model=model, args=vqa_training_arguments(args, output / "pretraining", args.pretrain_steps),
                      train_dataset=train_pairs, data_collator=collator)
    trainer.train()
    folder = output / "pretraining" / "final"
    model.save_pretrained(folder)
    return folder


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--florence", help="pretrained FlorenceModel folder (e.g. outputs/florence-tiny-shapes)")
    parser.add_argument("--preset", default="florence-vqa-tiny", help="fusion preset (towers too, without --florence)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--data", choices=("shapes", "vqav2"), default="shapes")
    parser.add_argument("--questions"), parser.add_argument("--annotations"), parser.add_argument("--images")
    parser.add_argument("--split", default="val2014")
    parser.add_argument("--num-train", type=int, default=40000)
    parser.add_argument("--num-test", type=int, default=2000)
    parser.add_argument("--shapes-image-size", type=int, default=96, help="rendered Shapes image size")
    parser.add_argument("--image-size", type=int, default=64, help="model input resolution")
    parser.add_argument("--top-answers", type=int, default=3129)
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="fusion layers and head")
    parser.add_argument("--tower-lr-scale", type=float, default=0.3,
                        help="learning-rate factor of pretrained towers (1 when they start from their init)")
    parser.add_argument("--image-tower-lr-scale", type=float, default=None,
                        help="the image tower's own factor (default: --tower-lr-scale)")
    parser.add_argument("--freeze-image-tower", action="store_true",
                        help="keep the image tower frozen and compute its features once (much faster steps)")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast (GPUs, and CPUs with bf16 units, e.g. AVX-512 BF16 / AMX; fp32 elsewhere)")
    parser.add_argument("--attn-implementation", default=None, choices=("eager", "sdpa"),
                        help="attention kernels (default: sdpa on a GPU, eager on CPU, where torch's sdpa kernels are "
                             "~1.8x slower on the fusion's short bf16 sequences)")
    parser.add_argument("--pretrain-steps", type=int, default=0, help="ITM + MLM fusion pretraining steps first")
    parser.add_argument("--mask-token-id", type=int, default=0, help="MLM stand-in mask id ('!' in the CLIP vocab)")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (0: at the end only)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_arguments(args, RANGES)
    args.bf16 = resolve_bf16(args.bf16)
    return args


def build_model(args, vocabulary, train_set, processor, output: Path):
    preset = mf.load_preset(args.preset)
    fusion = {field: getattr(preset, field) for field in FUSION_FIELDS}
    labels = {"id2label": dict(enumerate(vocabulary)), "label2id": {a: i for i, a in enumerate(vocabulary)}}
    if args.pretrain_steps:
        folder = pretrain_fusion(args, fusion, train_set, output, processor.tokenizer)
        model = mf.FlorenceForVQA.from_pretrained(folder, num_labels=len(vocabulary), **labels)
    elif args.florence:
        model = mf.FlorenceForVQA.from_florence(args.florence, **fusion, **labels)
    else:
        print("No --florence folder: the towers start from their init (random weights).")
        model = mf.FlorenceForVQA(mf.load_preset(args.preset, **labels))
    model.set_attn_implementation(attention_kernels(args.attn_implementation))
    return model


def print_table(metrics, blind, train_seconds, wall, output) -> None:
    kinds = sorted(key.removeprefix("accuracy_") for key in metrics if key != "accuracy")
    print("\nheld-out VQA accuracy (%, official)\n")
    print(f"{'question type':<14} | {'model':>6} | {'blind':>6}")
    print(f"{'-' * 14}-|--------|-------")
    for kind in kinds:
        print(f"{kind:<14} | {metrics[f'accuracy_{kind}']:6.2f} | {blind[f'accuracy_{kind}']:6.2f}")
    print(f"{'overall':<14} | {metrics['accuracy']:6.2f} | {blind['accuracy']:6.2f}")
    print(f"\ntraining {train_seconds:.0f}s, wall {wall:.0f}s; saved model and processor to {output}")


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    output = Path(args.output)

    train, test = vqa_data(args.data, args.num_train, args.num_test, args.shapes_image_size, args.seed,
                           args.questions, args.annotations, args.images, args.split)
    vocabulary = mf.build_answer_vocabulary(train["answers"], top_n=args.top_answers)
    # The normalisation of the --florence folder the towers come from (a Florence-2 folder's ImageNet mean/std).
    processor = mf.FlorenceVQAProcessor.from_defaults(image_size=args.image_size, answer_vocabulary=vocabulary,
                                                      source=args.florence)
    train_set, test_set = trim_padding(preprocess(train, processor), preprocess(test, processor))
    print(f"{len(train_set)} training / {len(test_set)} test questions, {len(vocabulary)} answers, answers outside "
          f"the vocabulary dropped: {processor.answer_counts['dropped']} of "
          f"{sum(processor.answer_counts.values())} ({time.perf_counter() - start:.0f}s)")
    model = build_model(args, vocabulary, train_set, processor, output)
    if args.freeze_image_tower:
        cache_start = time.perf_counter()
        cache_image_features(model, train_set, test_set)
        print(f"image tower frozen: features of {len(train_set) + len(test_set)} images computed once "
              f"({time.perf_counter() - cache_start:.0f}s)")
    pretrained = args.florence or args.pretrain_steps
    optimizer = optimizer_for(model, args.learning_rate, args.tower_lr_scale if pretrained else 1.0,
                              args.image_tower_lr_scale if pretrained else None)
    trainer = Trainer(
        model=model, args=vqa_training_arguments(args, output / "trainer", args.steps, args.eval_every),
        train_dataset=train_set, eval_dataset=test_set, compute_metrics=make_compute_metrics(test, vocabulary),
        data_collator=feature_collator, optimizers=(optimizer, None),
    )
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    metrics = {key.removeprefix("eval_"): value for key, value in trainer.evaluate().items()
               if key.removeprefix("eval_").startswith("accuracy")}
    blind = blind_baseline(train, test)

    model.save_pretrained(output)
    processor.save_pretrained(output)
    wall = time.perf_counter() - start
    results = {"vqa": metrics, "blind_baseline": blind, "train_seconds": round(train_seconds, 1),
               "wall_seconds": round(wall, 1)}
    (output / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_model_card(output, model_name=output.name, results={"vqa": metrics})
    print_table(metrics, blind, train_seconds, wall, output)
    return results


if __name__ == "__main__":
    main()
