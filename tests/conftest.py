"""Shared test helpers."""

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

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
