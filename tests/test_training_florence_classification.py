"""Tests of `modeling_florence/training_florence_classification.py`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import pipeline

import modeling_florence as mf
from modeling_florence.training_florence_classification import (
    ClassificationCollator,
    ImageTextCollator,
    build_shifted_classification,
    classification_data,
    compute_accuracy,
    image_transform,
    require_columns,
    retrieval_pairs,
    run_retrieval,
)


REPO = Path(__file__).resolve().parent.parent


def test_data_errors_name_the_missing_columns(tmp_path):
    table = build_shifted_classification(num_train=2, num_test=0, image_size=32)["train"].rename_column("label", "y")
    with pytest.raises(ValueError, match=r"classification data set has no column\(s\) \['label'\].*'image', 'y'"):
        require_columns(table, ("image", "label"), "classification")
    with pytest.raises(ValueError, match="needs --image_folder"):
        classification_data("imagefolder", 32)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "a.png", "caption": "a red circle"}) + "\n")
    with pytest.raises(ValueError, match="text"):
        retrieval_pairs("jsonl", 32, pairs_file=str(pairs))


def test_transforms_collators_and_metric(florence_folder, shifted):
    processor = mf.FlorenceProcessor.from_pretrained(florence_folder)
    dataset = shifted["train"].with_transform(image_transform(processor.image_processor))
    batch = ClassificationCollator()([dataset[0], dataset[1], dataset[2]])
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["labels"].tolist() == [0, 1, 2]
    pairs = mf.build_pairs(num_train=6, num_validation=0, num_test=0, image_size=32)["train"]
    rows = [pairs[i] for i in range(6)]
    batch = ImageTextCollator(processor)(rows)
    assert batch["pixel_values"].shape == (6, 3, 32, 32) and batch["input_ids"].shape[0] == 6
    assert batch["labels"].tolist() == mf.text_labels([row["text"] for row in rows]).tolist()
    from transformers import EvalPrediction

    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]]).numpy()
    assert compute_accuracy(EvalPrediction(logits, torch.tensor([0, 1]).numpy())) == {"top1": 50.0, "top5": 100.0}


def test_classification_and_lora_scripts_run_and_save_loadable_models(florence_folder, tmp_path):
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import finetune_classification
        import finetune_lora
    finally:
        sys.path.remove(str(REPO / "examples"))
    tiny = ["--num_train", "60", "--num_test", "30", "--epochs", "1", "--batch_size", "20"]
    finetune_classification.main(["--model", str(florence_folder), "--output", str(tmp_path / "full"), *tiny])
    results = json.loads((tmp_path / "full" / "finetune_results.json").read_text())
    assert results["trainable_fraction"] == 1.0 and 0 <= results["top1"] <= 100
    assert pipeline("image-classification", model=str(tmp_path / "full"))(
        build_shifted_classification(num_train=1, num_test=0, image_size=32)["train"][0]["image"])
    finetune_classification.main(["--model", str(florence_folder), "--output", str(tmp_path / "probe"),
                                  "--linear_probe", *tiny])
    probe = json.loads((tmp_path / "probe" / "finetune_results.json").read_text())
    assert probe["trainable_parameters"] == 30 * (256 + 1)  # the classifier of florence-tiny's 256-wide tower
    finetune_lora.main(["--model", str(florence_folder), "--output", str(tmp_path / "lora"), *tiny])
    lora = json.loads((tmp_path / "lora" / "finetune_results.json").read_text())
    assert lora["trainable_fraction"] < 0.05 and lora["adapter_bytes"] < 0.2 * (
        tmp_path / "full" / "model.safetensors").stat().st_size
    assert not (tmp_path / "lora" / "model.safetensors").exists()
    base = mf.FlorenceForImageClassification.from_pretrained(tmp_path / "full")
    base.load_adapter(str(tmp_path / "lora"))  # Transformers' route reads the PEFT adapter too
    # the comparison with full fine-tuning, over two seeds: one folder per seed, every run in the json
    finetune_lora.main(["--model", str(florence_folder), "--output", str(tmp_path / "seeds"), "--compare_full",
                        "--seeds", "0", "1", *tiny])
    rows = json.loads((tmp_path / "seeds" / "lora_comparison.json").read_text())
    assert [(row["seed"], row["mode"]) for row in rows] == [(0, "lora"), (0, "full"), (1, "lora"), (1, "full")]
    assert all((tmp_path / "seeds" / f"seed-{seed}" / "adapter_model.safetensors").is_file() for seed in (0, 1))


def test_retrieval_two_processes_equal_one_on_the_same_global_batch(florence_folder, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) of 4 pairs = 1 process of 8: same losses, same weights."""
    script = [str(REPO / "examples" / "finetune_retrieval.py"), "--model", str(florence_folder), "--num_train", "32",
              "--max_steps", "3", "--no_eval", "--learning_rate", "1e-5"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    single = subprocess.run([sys.executable, *script, "--batch_size", "8", "--output", str(tmp_path / "one")],
                            cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    # Accelerate runs several CPU processes through its multi-process launcher with ACCELERATE_USE_CPU (a config with
    # `use_cpu: true` would start a single process outside mpirun).
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                "29523"]
    double = subprocess.run([*launcher, *script, "--batch_size", "4", "--output", str(tmp_path / "two")],
                            cwd=REPO, env={**environment, "ACCELERATE_USE_CPU": "true"}, capture_output=True,
                            text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "finetune_results.json").read_text())["losses"]
    two = json.loads((tmp_path / "two" / "finetune_results.json").read_text())["losses"]
    assert sorted(one) == sorted(two) == ["1", "2", "3"], (one, two)
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5)
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def aligned_folder(florence_folder, tmp_path_factory):
    """florence_folder trained briefly on Shapes pairs: a two-tower model that already retrieves, as `make demo`'s."""
    folder = tmp_path_factory.mktemp("aligned")
    run_retrieval(str(florence_folder), str(folder), evaluate=False, learning_rate=2e-3, warmup_steps=25,
                  max_steps=300, num_train=4800, per_device_train_batch_size=64, seed=0)
    return folder


def mean_recall(results: dict) -> float:
    """The mean of R@1/5/10 both ways (RSUM / 6), the usual single retrieval figure."""
    return sum(results[f"{way}_R@{k}"] for way in ("i2t", "t2i") for k in (1, 5, 10)) / 6


def test_the_documented_retrieval_fine_tuning_keeps_held_out_recall(aligned_folder, tmp_path):
    """The README's commands (`finetune_retrieval.py ... --max_steps 50`, `finetune_lora.py --task retrieval ...`)
    with their defaults (LoRA for 1 epoch here, to keep CI short) do not lose held-out recall: the LoRA one once fell
    from R@1 57 to 26. On this CI-sized model (R@1 ~8 % on 200 pairs) a gain is within the noise of a few pairs, and
    which way R@1 moves differed between CPUs (fp32 GEMMs round differently on AVX2 and AVX-512), so the test bounds
    the loss of mean recall over R@1/5/10 both ways; the gains are measured on the demo model (README).
    `finetune_lora.py` evaluates on `--num_test` pairs."""
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import finetune_lora
        import finetune_retrieval
    finally:
        sys.path.remove(str(REPO / "examples"))
    finetune_retrieval.main(["--model", str(aligned_folder), "--output", str(tmp_path / "full"), "--max_steps", "50",
                             "--num_test", "200"])
    full = json.loads((tmp_path / "full" / "finetune_results.json").read_text())
    assert full["retrieval_pairs"] == 200
    assert mean_recall(full["before"]) > 15  # the aligned model retrieves (chance: R@1/5/10 = 0.5/2.5/5 %)
    assert mean_recall(full["after"]) >= mean_recall(full["before"]) - 2.0, (full["before"], full["after"])
    finetune_lora.main(["--task", "retrieval", "--model", str(aligned_folder), "--output", str(tmp_path / "lora"),
                        "--epochs", "1", "--num_test", "150"])
    lora = json.loads((tmp_path / "lora" / "finetune_results.json").read_text())
    assert lora["retrieval_pairs"] == 150
    assert mean_recall(lora["after"]) >= mean_recall(lora["before"]) - 2.0, (lora["before"], lora["after"])
