"""pretraining_florence checkpoints: atomic re-saves (a crash at any point leaves `latest` on a complete folder) and
a clear error when resuming a checkpoint of another model."""

import json
import os
import shutil

import pytest
import torch
from accelerate import Accelerator

from modeling_florence import pretraining_florence
from modeling_florence.pretraining_florence import load_checkpoint, resolve_checkpoint, save_checkpoint


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
