"""Tests of `modeling_florence/video_processing_florence.py`."""

import numpy as np
import pytest
from PIL import Image

from modeling_florence import FlorenceVideoProcessor, video_processing_florence

from florence_testing import ResizeRecorder


class ConversionRecorder:
    """Counts frames converted to RGB by the video processor, and their shapes."""

    def __init__(self, monkeypatch):
        self.shapes, original = [], video_processing_florence.frame_to_array

        def record(frame, min_side=None):
            array = original(frame, min_side)
            self.shapes.append(array.shape)
            return array

        monkeypatch.setattr(video_processing_florence, "frame_to_array", record)


def test_video_converts_only_sampled_frames(tmp_path, video_writer, monkeypatch):
    video_writer(tmp_path / "clip.mp4", frames=40)
    recorder = ConversionRecorder(monkeypatch)
    processor = FlorenceVideoProcessor(num_frames=4, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    assert processor(str(tmp_path / "clip.mp4"))["pixel_values_videos"].shape == (1, 4, 3, 32, 32)
    assert len(recorder.shapes) == 4  # of 40 frames
    recorder.shapes.clear()
    processor(str(tmp_path / "clip.mp4"), num_clips=2, num_crops=3)
    assert len(recorder.shapes) == 8


def test_video_frame_count_and_frame_size_are_limited(tmp_path, video_writer):
    video_writer(tmp_path / "long.mp4", frames=30)
    with pytest.raises(ValueError, match="30 frames, over max_frames=20"):
        FlorenceVideoProcessor(num_frames=4, max_frames=20)(str(tmp_path / "long.mp4"))
    with pytest.raises(ValueError, match="64x48 = 3,072 pixels.*max_image_pixels=3,000"):
        FlorenceVideoProcessor(num_frames=4, max_image_pixels=3000)(str(tmp_path / "long.mp4"))
    with pytest.raises(ValueError, match="over max_frames=20"):
        FlorenceVideoProcessor(num_frames=4, max_frames=20)(np.zeros((30, 8, 8, 3), np.uint8))
    assert video_processing_florence.count_frames(tmp_path / "long.mp4", "long.mp4", 100) == 30


def test_large_video_frames_are_scaled_when_converted(tmp_path, video_writer, monkeypatch):
    video_writer(tmp_path / "large.mp4", frames=6, size=(480, 640))
    recorder = ConversionRecorder(monkeypatch)
    processor = FlorenceVideoProcessor(num_frames=3, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    out = processor(str(tmp_path / "large.mp4"))["pixel_values_videos"]
    assert out.shape == (1, 3, 3, 32, 32)
    assert set(recorder.shapes) == {(64, 85, 3)}  # never 480x640 RGB: twice the target, by FFmpeg's area filter


def test_extreme_aspect_video_is_cut_before_resizing(tmp_path, video_writer):
    video_writer(tmp_path / "strip.mp4", frames=4, size=(16, 2048))
    processor = FlorenceVideoProcessor(num_frames=2, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                       max_resized_edge=1024)
    recorder = ResizeRecorder(processor)
    assert processor(str(tmp_path / "strip.mp4"))["pixel_values_videos"].shape == (1, 2, 3, 32, 32)
    assert max(recorder.inputs) <= 16 * 40
    with pytest.raises(ValueError, match="max_resized_edge"):
        processor(str(tmp_path / "strip.mp4"), num_crops=3)


def test_video_processor_decodes_samples_and_pads(tmp_path, video_writer):
    video_writer(tmp_path / "clip.mp4")
    processor = FlorenceVideoProcessor(num_frames=4, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    out = processor(str(tmp_path / "clip.mp4"))
    assert out["pixel_values_videos"].shape == (1, 4, 3, 32, 32) and out["num_views"] == 1
    # the bright bar moves right: sampled frames must be in temporal order
    columns = [frame.mean(dim=(0, 1)).argmax().item() for frame in out["pixel_values_videos"][0]]
    assert columns == sorted(columns) and columns[0] < columns[-1]
    short = [Image.new("RGB", (40, 40), (i * 80, 0, 0)) for i in range(2)]  # 2 frames -> padded to 4
    assert processor(short)["pixel_values_videos"].shape == (1, 4, 3, 32, 32)
    assert processor.clip_indices(2).__repr__() == repr([np.array([0, 0, 1, 1])])
    strided = FlorenceVideoProcessor(num_frames=3, frame_stride=2)
    assert strided.clip_indices(20)[0].tolist() == [8, 10, 12]


def test_video_processor_views_and_errors(tmp_path, video_writer):
    video_writer(tmp_path / "clip.mp4", frames=16)
    processor = FlorenceVideoProcessor(num_frames=4, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    out = processor([str(tmp_path / "clip.mp4")] * 2, num_clips=2, num_crops=3)
    assert out["pixel_values_videos"].shape == (2 * 6, 4, 3, 32, 32) and out["num_views"] == 6
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        processor(str(tmp_path / "missing.mp4"))
    (tmp_path / "broken.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        processor(str(tmp_path / "broken.mp4"))
