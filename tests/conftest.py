"""Shared test helpers."""

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest


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


@pytest.fixture
def example_script():
    """`load(relative_path)`: import a script under `examples/` (e.g. "finetune_vqa.py", "space/app.py") as a module;
    the examples are scripts, not a package."""

    def load(relative_path: str):
        path = Path(__file__).resolve().parent.parent / "examples" / relative_path
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
