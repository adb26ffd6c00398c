"""The shared training module (`training_florence`) and what every task's script takes from it: checked optimizer
groups, quiet CPU / multi-process defaults, one flag style with aliases, and script arguments refused before any
training when they would train the wrong way (each script run as `__main__` in this process: tests never import
example scripts as modules)."""

import json
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from modeling_florence.training_florence import (
    ArgumentParser,
    fused_adamw,
    grouped_adamw,
    process_threads,
    quiet_defaults,
    require_columns,
    reuse_freed_memory,
    training_arguments,
)

REPO = Path(__file__).resolve().parent.parent


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))


@pytest.mark.parametrize("group, message", [
    ({"lr": -0.5}, "parameter group 0 lr must be >= 0"), ({"lr": float("nan")}, "parameter group 0 lr must be a finite"),
    ({"weight_decay": float("inf")}, "parameter group 0 weight_decay must be a finite"),
])
def test_fused_adamw_checks_every_group_not_only_the_default_rate(group, message):
    """torch checks only the default `lr`: a negative group rate would run gradient ascent."""
    with pytest.raises(ValueError, match=message):
        fused_adamw([{"params": tiny_model().parameters(), **group}], lr=1e-3)


def test_grouped_adamw_scales_prefixes_and_refuses_negative_scales():
    model = tiny_model()
    optimizer = grouped_adamw(model, 1e-3, {"0.": 0.5})
    rates = {(group["lr"], group["weight_decay"]) for group in optimizer.param_groups}
    assert rates == {(5e-4, 0.01), (5e-4, 0.0), (1e-3, 0.0)}
    with pytest.raises(ValueError, match="learning-rate scale of '0.' must be >= 0"):
        grouped_adamw(model, 1e-3, {"0.": -1.0})
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        grouped_adamw(model, 0.0, {})


def test_vqa_and_detection_optimizers_refuse_negative_rates():
    from modeling_florence.training_florence_detection import detection_optimizer
    from modeling_florence.training_florence_vqa import optimizer_for

    model = tiny_model()
    with pytest.raises(ValueError, match="must be >= 0"):
        optimizer_for(model, 3e-4, tower_lr_scale=-1.0)
    with pytest.raises(ValueError, match="parameter group 0 lr must be >= 0"):
        detection_optimizer(model, 1e-3, backbone_learning_rate=-0.5)


def test_training_arguments_are_quiet_on_cpu_and_under_ddp():
    """pin_memory only with CUDA (torch warns on every CPU run otherwise); no unused-parameter search under DDP."""
    from modeling_florence.training_florence_classification import training_arguments as classification_arguments

    for arguments in (training_arguments("out"), classification_arguments("out")):
        assert arguments.dataloader_pin_memory is torch.cuda.is_available()
        assert arguments.ddp_find_unused_parameters is False
    assert quiet_defaults()["dataloader_pin_memory"] is torch.cuda.is_available()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is a CPU one")
def test_a_cpu_trainer_loader_does_not_warn_about_pin_memory(tmp_path):
    from transformers import Trainer

    dataset = [{"x": torch.zeros(3)} for _ in range(4)]
    trainer = Trainer(model=tiny_model(), args=training_arguments(tmp_path, use_cpu=True, per_device_train_batch_size=2),
                      train_dataset=dataset, data_collator=lambda rows: {"x": torch.stack([r["x"] for r in rows])})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        next(iter(trainer.get_train_dataloader()))
    assert not [w for w in caught if "pin_memory" in str(w.message)]


def test_one_flag_style_with_the_other_as_an_alias():
    parser = ArgumentParser()
    parser.add_argument("--num-train", type=int, default=1)
    parser.add_argument("--max_steps", type=int, default=1)
    for argv in (["--num-train", "5", "--max-steps", "7"], ["--num_train", "5", "--max_steps", "7"]):
        args = parser.parse_args(argv)
        assert (args.num_train, args.max_steps) == (5, 7)
    assert "--num-train NUM_TRAIN, --num_train NUM_TRAIN" in parser.format_help()


def test_require_columns_names_what_is_missing():
    with pytest.raises(ValueError, match=r"no column\(s\) \['label'\] \(columns found: \['image'\]\)"):
        require_columns(["image"], ("image", "label"), "classification")


def refused_in_process(monkeypatch, script: str, *argv: str) -> int:
    """The exit code of `examples/<script> argv...` run as `__main__` in this interpreter (its imports are already
    loaded here: a refusal test costs milliseconds, not a fresh interpreter's ~10 s of imports). An uncaught error
    exits 1 with its message on stderr, as the interpreter would."""
    monkeypatch.setattr(sys, "argv", [str(REPO / "examples" / script), *argv])
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    try:
        runpy.run_path(str(REPO / "examples" / script), run_name="__main__")
    except SystemExit as exited:
        return exited.code
    except Exception as error:  # noqa: BLE001
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


@pytest.mark.parametrize("argv, message", [
    (["finetune_detection.py", "--backbone_learning_rate", "-0.5"], "--backbone-learning-rate must be >= 0"),
    (["finetune_detection.py", "--max_steps", "0"], "--max-steps must be >= 1, got 0"),
    (["finetune_vqa.py", "--tower-lr-scale", "-1"], "--tower-lr-scale must be >= 0"),
    (["finetune_vqa.py", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["finetune_vqa.py", "--learning-rate", "nan"], "--learning-rate must be a finite number"),
    (["finetune_retrieval.py", "--model", "m", "--max_steps", "0"], "--max-steps must not be 0"),
])
def test_scripts_refuse_arguments_that_train_the_wrong_way(tmp_path, argv, message, monkeypatch, capsys):
    """Each used to exit 0 (gradient ascent, or a step run for `0` steps); now refused before any data is built."""
    code = refused_in_process(monkeypatch, *argv, "--output", str(tmp_path / "out"))
    stderr = capsys.readouterr().err
    assert code != 0 and message in stderr, stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_evaluate_zero_shot_does_not_overwrite_results_silently(tmp_path, monkeypatch, capsys):
    """A fine-tuning run's `eval_results.json` in the model folder is kept unless `--overwrite` (or `--output`)."""
    (tmp_path / "eval_results.json").write_text(json.dumps({"top1": 91.0}))
    code = refused_in_process(monkeypatch, "evaluate_zero_shot.py", "--model", str(tmp_path))
    stderr = capsys.readouterr().err
    assert code != 0 and "eval_results.json exists" in stderr and "--overwrite" in stderr
    assert json.loads((tmp_path / "eval_results.json").read_text()) == {"top1": 91.0}


@pytest.mark.parametrize("environment, expected", [
    ({"OMP_NUM_THREADS": "1"}, 1),
    ({"WORLD_SIZE": "2"}, max(1, (os.cpu_count() or 1) // 2)),
    ({}, os.cpu_count() or 1),
    ({"OMP_NUM_THREADS": "junk"}, os.cpu_count() or 1),
])
def test_process_threads_honours_omp_num_threads_then_shares_the_cores(monkeypatch, environment, expected):
    for name in ("OMP_NUM_THREADS", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert process_threads() == expected


FAULTS_OF_A_STEP = """
import resource, sys, torch
from modeling_florence.training_florence import reuse_freed_memory
taken = reuse_freed_memory() if sys.argv[1] == "reuse" else None
def step():  # a step's activations: allocated in the forward, all freed after the backward
    activations = [torch.ones(1 << 20) for _ in range(30)]
    del activations
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(taken, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_reuse_freed_memory_stops_each_step_faulting_its_activations_in_again():
    """Thirty 4 MiB activations a step: glibc trims them back to the kernel after every step (~30,000 page faults a
    step), and after `reuse_freed_memory` the next step reuses them (a few hundred)."""
    def faults(mode):
        result = subprocess.run([sys.executable, "-c", FAULTS_OF_A_STEP, mode], capture_output=True, text=True,
                                check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        taken, count = result.stdout.split()
        return taken, int(count)

    default_taken, default_faults = faults("default")
    taken, reused_faults = faults("reuse")
    assert taken == "True" and default_taken == "None"
    assert default_faults > 20_000 and reused_faults < default_faults / 20


def test_reuse_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert reuse_freed_memory() is False
