"""Tests of modeling_florence/data_florence.py not covered by test_data_loaders.py."""

import tracemalloc

import numpy as np
import pytest

from modeling_florence import video_processing_florence
from modeling_florence.data_florence import load_video_folder


@pytest.fixture
def long_video(tmp_path, video_writer):
    video_writer(tmp_path / "long.mp4", frames=300, size=(240, 320), rate=30)
    (tmp_path / "labels.csv").write_text("path,label\nlong.mp4,moving\n")
    return tmp_path


def _converted_frames(monkeypatch):
    calls = []
    original = video_processing_florence.frame_to_array

    def counting(frame, min_side=None):
        calls.append(min_side)
        return original(frame, min_side)

    monkeypatch.setattr(video_processing_florence, "frame_to_array", counting)
    return calls


@pytest.mark.parametrize("decode", [False, True])
def test_video_folder_validates_long_videos_with_bounded_memory(long_video, monkeypatch, decode):
    """300 frames of 320x240 are 69 MB as RGB; checking the folder converts only the sampled frames."""
    calls = _converted_frames(monkeypatch)
    tracemalloc.start()
    try:
        data = load_video_folder(long_video, long_video / "labels.csv", decode=decode, num_frames=8, strict=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) == 1 and len(calls) == 8, len(calls)
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    if decode:
        frames = data[0]["frames"]
        assert len(frames) == 8 and frames[0].size == (320, 240)
        first = int(video_processing_florence.uniform_indices(300, 8)[0])  # the bar starts at column 4 * frame index
        assert int(np.argmax(np.asarray(frames[0].convert("L")).mean(axis=0) > 128)) == 4 * first


def test_video_folder_refuses_a_bad_num_frames(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\nlong.mp4,moving\n")
    with pytest.raises(ValueError, match="num_frames"):
        load_video_folder(tmp_path, tmp_path / "labels.csv", num_frames=0)
