"""FSDP2 (configuration/accelerate-fsdp.yaml's plan) on 2 CPU processes with gloo equals one process, and a sharded
checkpoint resumes exactly. The worker is tests/fsdp_florence_worker.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
WORKER = str(REPO / "tests" / "fsdp_florence_worker.py")
# Accelerate starts CPU processes through its multi-process launcher with ACCELERATE_USE_CPU; it sets up gloo (its
# FSDP distributed type exists only for accelerators, so the worker applies the yaml's FSDP2 plan itself on CPU).
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
          str(REPO / "configuration" / "accelerate-fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "no"]


def run(command, **env):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_fsdp_two_processes_equal_one_and_resume_exactly(tmp_path):
    one, two, resumed = (tmp_path / name for name in ("one", "two", "resumed"))
    for folder in (one, two, resumed):
        folder.mkdir()
    run([sys.executable, WORKER, "--output", str(one)])
    log = run([*LAUNCH, "--main_process_port", "29541", WORKER, "--output", str(two), "--save-after", "2"],
              ACCELERATE_USE_CPU="true")
    assert "processes=2" in log and "sharded_parameters=0" not in log, log
    run([*LAUNCH, "--main_process_port", "29542", WORKER, "--output", str(resumed), "--resume",
         str(two / "checkpoint"), "--start", "2"], ACCELERATE_USE_CPU="true")
    assert len(list((two / "checkpoint").glob("*.distcp"))) == 2  # one shard file per process
    single, sharded = (json.loads((folder / "losses.json").read_text()) for folder in (one, two))
    assert sorted(single) == sorted(sharded) == ["1", "2", "3"]
    for step in single:
        assert abs(sharded[step] - single[step]) <= 1e-5, (step, single[step], sharded[step])
        a, b = load_file(one / f"grads-{step}.safetensors"), load_file(two / f"grads-{step}.safetensors")
        assert a.keys() == b.keys() and len(a) > 10
        for name in a:
            torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    # resuming from the step-2 sharded checkpoint continues exactly as the uninterrupted run
    assert json.loads((resumed / "losses.json").read_text())["3"] == sharded["3"]
    a, b = load_file(two / "grads-3.safetensors"), load_file(resumed / "grads-3.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)
