"""Tests of `modeling_florence/pretraining_florence.py`."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel, pipeline

from modeling_florence import pretraining_florence, FlorenceModel
from modeling_florence.model_card import split_results
from modeling_florence.pretraining_florence import load_checkpoint, resolve_checkpoint, save_checkpoint, Recipe, train


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


class Crash(Exception):
    pass


@pytest.fixture
def accelerator():
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    return accelerator


def history_of(output):
    return json.loads((resolve_checkpoint(output, "latest") / "trainer_state.json").read_text())["history"]


def crash_on_call(monkeypatch, module_function: str, number: int):
    """Make the `number`-th call of os.replace or shutil.rmtree (as pretraining_florence calls them) raise."""
    module, name = module_function.split(".")
    target = {"os": os, "shutil": shutil}[module]
    original, calls = getattr(target, name), []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == number:
            raise Crash(f"simulated crash at {module_function} call {number}")
        return original(*args, **kwargs)

    monkeypatch.setattr(getattr(pretraining_florence, module), name, failing)


REPO = Path(__file__).resolve().parent.parent


def tiny_recipe(tmp_path, steps=(4, 2), batch_size=16, **overrides) -> Path:
    recipe = {
        "model": "florence-tiny",
        "data": {"source": "shapes", "num_train": 96, "num_validation": 0, "num_test": 24,
                 "num_classification_test": 30},
        "batch_size": batch_size, "learning_rate": 0.002, "warmup_steps": 2,
        "stages": [{"name": "stage1", "steps": steps[0], "prompt_templates": True},
                   {"name": "stage2", "steps": steps[1], "prompt_templates": False}],
        "checkpoint_every": 3, "seed": 0, **overrides,
    }
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def losses(output: Path) -> dict[int, float]:
    with open(output / "metrics.csv") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle) if row.get("loss")}


def write_shapes_shards(folder: Path, pairs, shards: int = 2) -> None:
    import io
    import tarfile

    def add(archive, name, payload: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))

    for shard in range(shards):
        with tarfile.open(folder / f"shard-{shard}.tar", "w") as archive:
            for index in range(shard, len(pairs), shards):
                buffer = io.BytesIO()
                pairs[index]["image"].save(buffer, format="PNG")
                add(archive, f"{index:05d}.png", buffer.getvalue())
                add(archive, f"{index:05d}.txt", pairs[index]["text"].encode())


@pytest.mark.parametrize("crash_point", ["save_state", "os.replace.1", "os.replace.2", "shutil.rmtree.1"])
def test_a_crash_while_a_step_is_saved_again_leaves_latest_complete(tmp_path, accelerator, monkeypatch,
                                                                    crash_point):
    """Step 6, resumed from step 3 and saved again: the folder rename, the pointer update and the deletion of the
    old copy can each be interrupted; `latest` always names a complete checkpoint (old or new)."""
    save_checkpoint(accelerator, tmp_path, 3, [{"run": "first"}], keep=3)
    save_checkpoint(accelerator, tmp_path, 6, [{"run": "first"}], keep=3)
    with monkeypatch.context() as patch:
        if crash_point == "save_state":
            patch.setattr(accelerator, "save_state", lambda *a, **k: (_ for _ in ()).throw(Crash("save_state")))
        else:
            name, number = crash_point.rsplit(".", 1)
            crash_on_call(patch, name, int(number))
        with pytest.raises(Crash):
            save_checkpoint(accelerator, tmp_path, 6, [{"run": "again"}], keep=3)
    assert history_of(tmp_path) in ([{"run": "first"}], [{"run": "again"}])
    # and the next save cleans up: one copy of step 6, the new one
    save_checkpoint(accelerator, tmp_path, 6, [{"run": "third"}], keep=3)
    assert history_of(tmp_path) == [{"run": "third"}]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert len([n for n in names if n.startswith("step-0000006")]) == 1 and "step-0000003" in names


def test_resuming_a_checkpoint_of_another_model_names_it(tmp_path):
    writer = Accelerator(cpu=True)
    writer.prepare(torch.nn.Linear(2, 2))
    writer.save_state(str(tmp_path / "step-0000001"))
    reader = Accelerator(cpu=True)
    reader.prepare(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"Cannot resume from .*step-0000001: it was saved by a different model.*size"):
        load_checkpoint(reader, tmp_path / "step-0000001")


def test_killed_run_resumes_like_an_uninterrupted_one(tmp_path):
    recipe = Recipe.from_file(tiny_recipe(tmp_path))
    train(recipe, tmp_path / "full", log_with=None)
    train(recipe, tmp_path / "resumed", stop_after_step=3, log_with=None)  # interrupted right after a checkpoint
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text() == "step-0000003"
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    train(recipe, tmp_path / "resumed", resume_from_checkpoint="latest", log_with=None)
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 7))
    for step in range(4, 7):
        assert resumed[step] == pytest.approx(full[step], abs=1e-5)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0)
    assert not list((tmp_path / "resumed" / "checkpoints").glob(".tmp-*"))  # no half-written checkpoint left


def test_saved_model_loads_with_auto_classes_and_pipeline(tmp_path):
    # bf16 mixed precision (native on CPUs with bf16 units, fp32 elsewhere); the saved weights are fp32 either way.
    recipe = Recipe.from_file(tiny_recipe(tmp_path, steps=(2, 1), mixed_precision="bf16"))
    results = train(recipe, tmp_path / "run", log_with=None)
    assert {"zero_shot_top1", "zero_shot_top5", "i2t_R@5", "t2i_R@10"} <= set(results)
    output = tmp_path / "run"
    assert (output / "training_curves.png").stat().st_size > 1000
    assert json.loads((output / "eval_results.json").read_text()) == results
    card = ModelCard.load(output / "README.md")  # the card reports exactly the run's own results
    assert card.data.library_name == "transformers" and card.data.datasets == ["florence-shapes"]
    metrics, counts = split_results(results)  # measured figures are published; counts (classes, pairs) are not
    assert counts and not set(counts) & {r.metric_type for r in card.data.eval_results}
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == pytest.approx(metrics)
    assert losses(output) and all(math.isfinite(loss) for loss in losses(output).values())
    assert isinstance(AutoModel.from_pretrained(output), FlorenceModel)
    assert load_file(output / "model.safetensors")["logit_scale"].dtype == torch.float32
    from modeling_florence.shapes import build_classification

    image = build_classification(num_train=1, num_validation=0, num_test=0)["train"][0]["image"]
    scores = pipeline("zero-shot-image-classification", model=str(output))(image, candidate_labels=["red circle",
                                                                                                      "blue star"])
    assert len(scores) == 2


def test_batches_label_classes_not_prompts_and_workers_and_cache_change_nothing(tmp_path):
    from modeling_florence.pretraining_florence import PretrainingData, Stage
    from modeling_florence.processing_florence import FlorenceProcessor, text_label
    from modeling_florence.shapes import build_pairs

    pairs = build_pairs(num_train=64, num_validation=0, num_test=0)["train"]
    pairs = pairs.map(lambda row, index: {"text": "red circle" if index < 32 else row["text"],
                                          "is_label": index < 32 or row["is_label"]}, with_indices=True)
    processor = FlorenceProcessor.from_defaults(image_size=64)
    templates = ["a photo of a {}.", "a drawing of a {}."]
    recipe = Recipe.from_file(tiny_recipe(tmp_path, batch_size=32, num_workers=0))
    data = PretrainingData(pairs, processor, recipe, templates)
    loader = data.loader(Stage("stage1", 1, prompt_templates=True), 0, 1)
    keys, batch = next(iter(loader.batch_sampler)), next(iter(loader))
    red = [position for position, (row, _, _) in enumerate(keys) if row < 32]
    prompts = {processor.decode(batch["input_ids"][p], skip_special_tokens=True) for p in red}
    assert len(prompts) == 2  # both templates were drawn for the same class ...
    assert set(batch["labels"][red].tolist()) == {text_label("red circle")}  # ... and the class is one positive set
    texts = ["a photo of a red circle.", "a small blue star at the top left", "cross"]
    reference, tokenized = processor(text=texts), data.collate.tokenize(texts)
    for key in ("input_ids", "attention_mask"):
        torch.testing.assert_close(tokenized[key], reference[key], rtol=0, atol=0)
    # Worker processes and the image cache change where batches are built, never what they hold.
    cached_recipe = Recipe.from_file(tiny_recipe(tmp_path, batch_size=32, num_workers=2, cache_images=True))
    cached = PretrainingData(pairs, processor, cached_recipe, templates)
    for size in (None, 48):
        stage = Stage("s", 1, image_size=size)
        expected, got = list(data.loader(stage, 1, 4)), list(cached.loader(stage, 1, 4))
        assert len(got) == 3 and got[0]["pixel_values"].shape[-1] == (size or 64)
        for want, have in zip(expected, got):
            for key in want:
                torch.testing.assert_close(have[key], want[key], rtol=0, atol=0)


@pytest.mark.parametrize("prompt_templates", [True, False])
def test_every_prompt_of_a_stage_is_tokenised_before_its_workers_start(tmp_path, prompt_templates):
    """A worker forked by the stage's `DataLoader` inherits the tokenised prompts: its first epoch tokenises nothing
    (on 2 cores, tokenising there took CPU from the step and halved the first epoch's speed)."""
    from modeling_florence.pretraining_florence import PretrainingData, Stage
    from modeling_florence.processing_florence import FlorenceProcessor
    from modeling_florence.shapes import build_pairs

    pairs = build_pairs(num_train=64, num_validation=0, num_test=0)["train"]
    processor = FlorenceProcessor.from_defaults(image_size=64)
    templates = ["a photo of a {}.", "a drawing of a {}."]
    data = PretrainingData(pairs, processor, Recipe.from_file(tiny_recipe(tmp_path, batch_size=32, num_workers=0)),
                           templates)
    loader = data.loader(Stage("s", 1, prompt_templates=prompt_templates), 0, 6)
    prefilled = dict(data.collate.token_cache)
    labels = [text for text, label in zip(pairs["text"], pairs["is_label"]) if label]
    expected = [template.format(label) for label in labels for template in templates] if prompt_templates else labels
    assert labels and all(prompt in prefilled for prompt in expected)
    for batch in loader:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            assert ids[mask.bool()].tolist() in prefilled.values()
    assert data.collate.token_cache == prefilled  # nothing was tokenised during the epochs


def test_streamed_webdataset_run_resumes_exactly(tmp_path):
    from modeling_florence.shapes import build_pairs

    write_shapes_shards(tmp_path, build_pairs(num_train=40, num_validation=0, num_test=0)["train"])
    data = {"source": "webdataset", "path": str(tmp_path / "shard-*.tar"), "streaming": True}
    recipe = Recipe.from_file(tiny_recipe(tmp_path, steps=(3, 2), batch_size=16, data=data, checkpoint_every=2))
    train(recipe, tmp_path / "full", log_with=None)  # 5 steps of 16 rows: the stream wraps into a second epoch
    train(recipe, tmp_path / "resumed", stop_after_step=2, log_with=None)
    train(recipe, tmp_path / "resumed", resume_from_checkpoint="latest", log_with=None)
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(full) == sorted(resumed) == [1, 2, 3, 4, 5]
    for step in range(3, 6):
        assert resumed[step] == pytest.approx(full[step], abs=1e-5)


def test_image_folder_trains_on_class_names(tmp_path):
    from modeling_florence.pretraining_florence import PretrainingData, Stage, load_training_data
    from modeling_florence.processing_florence import FlorenceProcessor, text_label
    from modeling_florence.shapes import build_classification

    classification = build_classification(num_train=16, num_validation=0, num_test=0)["train"]
    names = classification.features["label"].names
    for index, row in enumerate(classification):
        folder = tmp_path / "images" / names[row["label"]].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        row["image"].save(folder / f"{index}.png")
    pairs, _, _ = load_training_data({"source": "imagefolder", "root": str(tmp_path / "images")}, 64)
    assert sorted(set(pairs["text"])) == sorted(names[:16]) and all(pairs["is_label"])
    recipe = Recipe.from_file(tiny_recipe(tmp_path, batch_size=16))
    data = PretrainingData(pairs, FlorenceProcessor.from_defaults(image_size=64), recipe, ["a photo of a {}."])
    batch = next(iter(data.loader(Stage("stage1", 1), 0, 1)))
    assert batch["pixel_values"].shape == (16, 3, 64, 64)
    assert set(batch["labels"].tolist()) == {text_label(name) for name in names[:16]}


def test_demo_recipe_evaluates_what_the_readme_claims():
    """`make demo`'s held-out sets: >= 20 zero-shot classes and >= 500 retrieval pairs with distinct captions."""
    from modeling_florence.pretraining_florence import load_training_data

    recipe = Recipe.from_file(REPO / "configuration" / "recipe-unicl-tiny.json")
    assert [stage.prompt_templates for stage in recipe.stages] == [True, False]
    config = recipe.model_config()
    data = dict(recipe.data, num_train=recipe.batch_size)
    _, test_pairs, zero_shot_set = load_training_data(data, config.vision_config.image_size)
    assert len(test_pairs) >= 500 and len(set(test_pairs["text"])) == len(test_pairs)
    assert len(set(zero_shot_set["label"])) >= 20
    assert zero_shot_set[0]["image"].size == (config.vision_config.image_size,) * 2


def test_two_processes_equal_one_on_the_same_global_batch(tmp_path):
    # A small learning rate: Adam's first steps are sign-like, so float-rounding differences in near-zero gradients
    # would otherwise flip whole updates; equal arithmetic is what is being tested, not chaos.
    recipe = tiny_recipe(tmp_path, steps=(2, 1), batch_size=8, checkpoint_every=0, learning_rate=1e-5)
    command = [sys.executable, "-m", "modeling_florence.pretraining_florence", "--recipe", str(recipe),
               "--log_with", "none", "--output"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(command + [str(tmp_path / "one")], cwd=REPO, env=environment, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                "--master_port=29517", "-m", "modeling_florence.pretraining_florence"]
    double = subprocess.run(launcher + command[3:] + [str(tmp_path / "two")], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3], (one, two)
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5)
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)


def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16(monkeypatch):
    from modeling_florence import pretraining_florence

    if torch.cuda.is_available():
        pytest.skip("the fallback concerns CPU training")
    monkeypatch.setattr(pretraining_florence, "bf16_on_this_cpu", lambda: False)
    assert pretraining_florence.resolve_mixed_precision("bf16") == (
        "no", "Mixed precision: fp32 (bf16 asked, but this CPU has no native bf16)")
    assert pretraining_florence.resolve_mixed_precision("no")[0] == "no"
    monkeypatch.setattr(pretraining_florence, "bf16_on_this_cpu", lambda: True)
    assert pretraining_florence.resolve_mixed_precision("bf16") == (
        "bf16", "Mixed precision: bf16 (this CPU computes bf16 natively)")


def test_dry_run_prints_parameters_memory_and_tokens(capsys):
    from modeling_florence import load_preset
    from modeling_florence.pretraining_florence import main

    figures = main(["--dry-run", "--model", "florence-tiny", "--batch_size", "8",
                                         "--num_processes", "2"])
    assert figures["parameters"] == sum(p.numel() for p in FlorenceModel(load_preset("florence-tiny")).parameters())
    assert figures["local_batch"] == 4 and figures["fsdp_units"] == 1 + 5 + 2  # 5 vision + 2 text layers, root
    assert figures["tokens_per_step"] == 8 * ((64 // 4) ** 2 + 77)
    assert 0 < figures["activations_gib"] < figures["memory_per_process_gib"]
    assert '"memory_per_process_gib"' in capsys.readouterr().out
    with pytest.raises(ValueError, match="not divisible by num_processes"):
        main(["--dry-run", "--model", "florence-tiny", "--batch_size", "9", "--num_processes", "2"])
