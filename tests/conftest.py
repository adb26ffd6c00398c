"""Shared test helpers."""

import io
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import modeling_florence as mf
from florence_testing import randomize_
from modeling_florence import FlorenceModel
from modeling_florence.training_florence_classification import build_shifted_classification
from tests.test_common import GENERATION_DAVIT, GENERATION_TEXT, tiny_florence_config

REPO = Path(__file__).resolve().parent.parent


def write_video(path, frames=12, size=(48, 64), rate=10):
    """A small mp4 of a bright vertical bar moving right (so frame order is checkable)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            frame = np.zeros((*size, 3), np.uint8)
            frame[:, index * 4 : index * 4 + 8] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
def video_writer():
    return write_video


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one mixed precision per process; tests that train with their own reset it afterwards."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()


def run_example(script: str, *argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `examples/<script>` in a fresh interpreter with the repository on `PYTHONPATH` (the examples are scripts,
    not modules: tests import library code, and run scripts end to end only this way); fails showing its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(REPO / "examples" / script), *argv], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


# Fixtures used by several test files.
@pytest.fixture
def fake_web(monkeypatch, tmp_path):
    """Replaces urllib's urlopen: records requested URLs and serves a small PNG (no network in tests)."""
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(buffer, "PNG")
    requested = []

    def urlopen(url, timeout=None):
        requested.append(url)
        return io.BytesIO(buffer.getvalue())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


@pytest.fixture(scope="module")
def florence_folder(tmp_path_factory):
    """A random florence-tiny at 32 px saved with its processor, as `make demo` saves the pretrained one."""
    folder = tmp_path_factory.mktemp("florence")
    torch.manual_seed(0)
    mf.FlorenceModel(mf.load_preset("florence-tiny", vision_config={"image_size": 32})).save_pretrained(folder)
    mf.FlorenceProcessor.from_defaults(image_size=32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def shifted():
    return build_shifted_classification(num_train=60, num_test=60, image_size=32)


@pytest.fixture(scope="module")
def florence():
    torch.manual_seed(0)
    return FlorenceModel(tiny_florence_config()).eval()


@pytest.fixture(scope="module")
def two_tower_folder(florence, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-tower")
    florence.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def timm_swin_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)).eval()
    path = tmp_path_factory.mktemp("timm") / "swin_tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def florence2_folder(tmp_path_factory):
    """A random tiny Transformers `Florence2ForConditionalGeneration` (2-stage DaViT, the common suite's) and its
    `save_pretrained` folder: the Florence-2 source of the DaViT detector and VQA adapter."""
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(
        Florence2Config(vision_config=GENERATION_DAVIT, text_config=GENERATION_TEXT, image_token_id=119)
    ).eval()
    folder = tmp_path_factory.mktemp("florence2")
    model.save_pretrained(folder)
    return model, folder

