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

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

import modeling_florence as mf
from modeling_florence.evaluation_florence_vqa import VQAAccuracy
from modeling_florence.model_card import write_model_card
from modeling_florence.pretraining_florence import bf16_on_this_cpu, fused_adamw
from modeling_florence.processing_florence_vqa import mask_tokens

FUSION_FIELDS = ("hidden_size", "num_fusion_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                 "hidden_dropout_prob", "attention_probs_dropout_prob", "vision_feature_stages",
                 "image_position_embeddings")


class TensorDataset(torch.utils.data.Dataset):
    """Pre-processed examples (tensors of equal shapes), served as dicts the default collator stacks."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        self.columns = columns

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.columns.items()}


def load_data(args):
    """(train, test) datasets with `image`, `question`, `question_type`, `answers` columns."""
    if args.data == "shapes":
        data = mf.build_vqa(num_train=args.num_train, num_validation=0, num_test=args.num_test,
                            image_size=args.shapes_image_size, seed=args.seed)
        return data["train"], data["test"]
    from modeling_florence.data_florence import load_vqav2

    full = load_vqav2(args.questions, args.annotations, args.images, split=args.split)
    split = full.train_test_split(test_size=args.num_test, seed=args.seed)
    return split["train"], split["test"]


def preprocess(dataset, processor, max_length: int = 32, batch_size: int = 256) -> TensorDataset:
    """Images, questions (padded to one length) and soft labels of a whole split, processed once."""
    columns = defaultdict(list)
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        out = processor(text=rows["question"], images=rows["image"], answers=rows["answers"], padding="max_length",
                        max_length=max_length)
        out["pixel_values"] = out["pixel_values"].half()  # half the memory; the image tower casts to its dtype
        for key in ("pixel_values", "input_ids", "attention_mask", "labels"):
            columns[key].append(out[key])
    return TensorDataset({key: torch.cat(values) for key, values in columns.items()})


def trim_padding(*datasets: TensorDataset) -> tuple[TensorDataset, ...]:
    """Drop the padding columns no question of any split uses (fewer text tokens, faster fusion)."""
    length = max(int(dataset.columns["attention_mask"].sum(1).max()) for dataset in datasets)
    for dataset in datasets:
        for key in ("input_ids", "attention_mask"):
            dataset.columns[key] = dataset.columns[key][:, :length]
    return datasets


def cache_image_features(model, *datasets: TensorDataset, batch_size: int = 256) -> None:
    """Frozen image tower: replace each split's `pixel_values` by the tower's output (`image_hidden_states`: the
    tokens of every `vision_feature_stages` entry), computed once, so training steps run the text tower, fusion and
    head only. Several stages are stored as columns `image_hidden_states.<i>`, reassembled by `feature_collator`."""
    model.vision_model.requires_grad_(False).eval()
    for dataset in datasets:
        pixels, features = dataset.columns.pop("pixel_values"), []
        for start in range(0, len(pixels), batch_size):
            output = model.get_image_hidden_states(pixels[start : start + batch_size].float())
            features.append([output] if isinstance(output, torch.Tensor) else list(output))
        for stage, stage_features in enumerate(zip(*features)):
            dataset.columns[f"image_hidden_states.{stage}"] = torch.cat(stage_features).half()


def feature_collator(rows: list[dict]) -> dict:
    """Stacks rows; the cached stage features (`image_hidden_states.<i>`) become one `image_hidden_states` tuple."""
    batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
    stages = sorted((key for key in batch if key.startswith("image_hidden_states.")),
                    key=lambda key: int(key.rsplit(".")[1]))
    if stages:
        batch["image_hidden_states"] = tuple(batch.pop(key) for key in stages)
    return batch


def blind_baseline(train, test) -> dict[str, float]:
    """Accuracy of answering every question with its most frequent training answer (unseen questions: the most
    frequent answer of the question type): what a question-only model converges to at best."""
    per_question, per_type = defaultdict(Counter), defaultdict(Counter)
    for question, kind, answers in zip(train["question"], train["question_type"], train["answers"]):
        per_question[question].update(mf.normalize_answer(a) for a in answers)
        per_type[kind].update(mf.normalize_answer(a) for a in answers)
    predictions = [
        (per_question.get(q) or per_type[k]).most_common(1)[0][0] for q, k in zip(test["question"], test["question_type"])
    ]
    return VQAAccuracy(keep_in_memory=True).compute(
        predictions=predictions, references=test["answers"], question_types=test["question_type"]
    )


def make_compute_metrics(test, vocabulary):
    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        answers = [vocabulary[i] for i in np.asarray(logits).argmax(-1)]
        return VQAAccuracy(keep_in_memory=True).compute(
            predictions=answers, references=test["answers"], question_types=test["question_type"]
        )

    return compute_metrics


def training_arguments(args, output: Path, steps: int, learning_rate: float, eval_every: int = 0) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output), max_steps=steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256, learning_rate=learning_rate, weight_decay=0.01, warmup_steps=int(0.1 * steps),
        lr_scheduler_type="cosine", logging_steps=max(1, steps // 10), save_strategy="no",
        eval_strategy="steps" if eval_every else "no", eval_steps=eval_every or None,
        report_to=[], dataloader_num_workers=0, remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
        seed=args.seed, disable_tqdm=True, max_grad_norm=1.0, bf16=args.bf16,
    )


class MLMCollator:
    """Stacks pairs and masks their texts for MLM (the CLIP vocabulary has no mask token: `mask_token_id` stands in)."""

    def __init__(self, mask_token_id: int, vocab_size: int, special_ids):
        self.mask_token_id, self.vocab_size, self.special_ids = mask_token_id, vocab_size, tuple(special_ids)

    def __call__(self, rows):
        batch = {key: torch.stack([row[key] for row in rows]) for key in ("pixel_values", "input_ids", "attention_mask")}
        batch["input_ids"], batch["mlm_labels"] = mask_tokens(
            batch["input_ids"], batch["attention_mask"], self.mask_token_id, self.vocab_size, self.special_ids
        )
        return batch


def optimizer_for(model, learning_rate: float, tower_lr_scale: float, image_tower_lr_scale: float | None = None,
                  weight_decay: float = 0.01):
    """AdamW with the pretrained towers at `tower_lr_scale` x the learning rate of the new fusion layers and head
    (METER trains its heads and fusion faster than the unimodal encoders; `image_tower_lr_scale`, when given, for the
    image tower alone); no decay on biases and norms; the fused kernel where the device has one."""
    scales = {"vision_model.": tower_lr_scale if image_tower_lr_scale is None else image_tower_lr_scale,
              "text_model.": tower_lr_scale}
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        scale = next((value for prefix, value in scales.items() if name.startswith(prefix)), 1.0)
        decay = parameter.ndim > 1 and "embedding" not in name
        groups.setdefault((scale, decay), []).append(parameter)
    return fused_adamw([
        {"params": params, "lr": learning_rate * scale, "weight_decay": weight_decay if decay else 0.0}
        for (scale, decay), params in groups.items()
    ], lr=learning_rate)


def attention_kernels(args) -> str:
    return args.attn_implementation or ("sdpa" if torch.cuda.is_available() else "eager")


def pretrain_fusion(args, model_kwargs, train_pairs: TensorDataset, output: Path, tokenizer):
    """ITM (hard negatives) + MLM on the training images paired with their questions; returns the folder."""
    if args.florence:
        model = mf.FlorenceForVisionLanguagePretraining.from_florence(args.florence, **model_kwargs)
    else:
        model = mf.FlorenceForVisionLanguagePretraining(mf.load_preset(args.preset, **model_kwargs))
    model.config.mask_token_id = args.mask_token_id
    model.set_attn_implementation(attention_kernels(args))
    trainer = Trainer(
        model=model, args=training_arguments(args, output / "pretraining", args.pretrain_steps, args.learning_rate),
        train_dataset=train_pairs,
        data_collator=MLMCollator(args.mask_token_id, model.config.text_config.vocab_size,
                                  (tokenizer.bos_token_id, tokenizer.eos_token_id)),
    )
    trainer.train()
    folder = output / "pretraining" / "final"
    model.save_pretrained(folder)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    if args.bf16 and not torch.cuda.is_available() and not bf16_on_this_cpu():
        print("--bf16: this CPU has no bf16 units (bf16 would be slower than fp32): training in fp32")
        args.bf16 = False
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    output = Path(args.output)

    train, test = load_data(args)
    vocabulary = mf.build_answer_vocabulary(train["answers"], top_n=args.top_answers)
    processor = mf.FlorenceVQAProcessor.from_defaults(image_size=args.image_size, answer_vocabulary=vocabulary)
    train_set, test_set = trim_padding(preprocess(train, processor), preprocess(test, processor))
    print(f"{len(train_set)} training / {len(test_set)} test questions, {len(vocabulary)} answers, answers outside "
          f"the vocabulary dropped: {processor.answer_counts['dropped']} of "
          f"{sum(processor.answer_counts.values())} ({time.perf_counter() - start:.0f}s)")

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

    model.set_attn_implementation(attention_kernels(args))
    if args.freeze_image_tower:
        cache_start = time.perf_counter()
        cache_image_features(model, train_set, test_set)
        print(f"image tower frozen: features of {len(train_set) + len(test_set)} images computed once "
              f"({time.perf_counter() - cache_start:.0f}s)")
    pretrained = args.florence or args.pretrain_steps
    tower_lr_scale = args.tower_lr_scale if pretrained else 1.0
    image_tower_lr_scale = args.image_tower_lr_scale if pretrained else None
    optimizer = optimizer_for(model, args.learning_rate, tower_lr_scale, image_tower_lr_scale)
    trainer = Trainer(
        model=model, args=training_arguments(args, output / "trainer", args.steps, args.learning_rate, args.eval_every),
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

    kinds = sorted(key.removeprefix("accuracy_") for key in metrics if key != "accuracy")
    print("\nheld-out VQA accuracy (%, official)\n")
    print(f"{'question type':<14} | {'model':>6} | {'blind':>6}")
    print(f"{'-' * 14}-|--------|-------")
    for kind in kinds:
        print(f"{kind:<14} | {metrics[f'accuracy_{kind}']:6.2f} | {blind[f'accuracy_{kind}']:6.2f}")
    print(f"{'overall':<14} | {metrics['accuracy']:6.2f} | {blind['accuracy']:6.2f}")
    print(f"\ntraining {train_seconds:.0f}s, wall {wall:.0f}s; saved model and processor to {output}")
    return results


if __name__ == "__main__":
    main()
