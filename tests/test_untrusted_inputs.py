"""Untrusted inputs: bounded work, correct RGB for every PIL mode, no silent URL fetches, open_clip-exact special
tokens, and loud failures on broken tokenizer folders (issue 10, deliverable 5)."""

import base64
import io
import json
import shutil
import struct
import urllib.request
import zlib

import numpy as np
import pytest
import torch
from open_clip.tokenizer import tokenize as open_clip_tokenize
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, CLIPImageProcessor

from modeling_florence import (
    FlorenceImageProcessor,
    FlorenceImageProcessorPil,
    FlorenceProcessor,
    FlorenceTokenizer,
    FlorenceVideoProcessor,
)
from modeling_florence import image_processing_florence, video_processing_florence

BACKENDS = [FlorenceImageProcessor, FlorenceImageProcessorPil]
RAW = dict(do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)  # pixel values untouched


def raw_rgb(processor_class, image) -> np.ndarray:
    """The RGB values a processor gives an image, as (H, W, 3) integers."""
    out = processor_class(**RAW)(image, return_tensors="pt")["pixel_values"][0]
    return out.permute(1, 2, 0).round().to(torch.int64).numpy()


def on_white(color, alpha):
    """Independent reference for compositing onto white: c * a + 255 * (1 - a)."""
    return np.asarray(color, float) * alpha / 255 + 255 * (1 - alpha / 255)


# ---------------------------------------------------------------- every PIL mode -> correct RGB


def mode_cases():
    values16 = np.array([[0, 1, 128, 129, 25700, 40000, 65535]], dtype=np.uint16)
    expected16 = np.array([[round(v / 257) for v in values16[0]]])
    yield "I;16", Image.fromarray(values16), expected16
    yield "I;16B", Image.frombytes("I;16B", (7, 1), values16.astype(">u2").tobytes()), expected16
    values32 = np.array([[-500, 0, 257, 30000, 65535, 70000]], dtype=np.int32)
    yield "I", Image.fromarray(values32), np.array([[0, 0, 1, 117, 255, 255]])
    floats = np.array([[-3.0, 0.4, 0.6, 100.2, 254.6, 300.0, np.nan]], dtype=np.float32)
    yield "F", Image.fromarray(floats), np.array([[0, 0, 1, 100, 255, 255, 0]])
    cmyk = [(100, 50, 0, 60), (0, 0, 0, 0), (255, 10, 128, 0), (30, 60, 90, 255)]
    image = Image.new("CMYK", (4, 1))
    image.putdata(cmyk)
    yield "CMYK", image, np.array([[[255 * (1 - c / 255) * (1 - k / 255) for c in pixel[:3]] for pixel, k in
                                     ((p, p[3]) for p in cmyk)]])
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    image = Image.new("P", (3, 1))
    image.putpalette(palette)
    image.putdata([2, 0, 1])
    yield "P", image, np.array([[[0, 0, 255], [255, 0, 0], [0, 255, 0]]])
    keyed = image.copy()
    keyed.info["transparency"] = 0  # index 0 (red) is transparent -> white
    yield "P+transparency", keyed, np.array([[[0, 0, 255], [255, 255, 255], [0, 255, 0]]])
    rgba_palette = Image.new("P", (2, 1))
    rgba_palette.putpalette([200, 100, 0, 64, 0, 0, 250, 255], rawmode="RGBA")
    rgba_palette.putdata([0, 1])
    yield "P+RGBA palette", rgba_palette, np.array([on_white([200, 100, 0], 64), on_white([0, 0, 250], 255)])[None]
    gray_alpha = Image.new("LA", (2, 1))
    gray_alpha.putdata([(100, 128), (10, 0)])
    yield "LA", gray_alpha, np.array([on_white([100] * 3, 128), on_white([10] * 3, 0)])[None]
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(200, 100, 50, 200), (0, 0, 0, 30)])
    yield "RGBA", rgba, np.array([on_white([200, 100, 50], 200), on_white([0, 0, 0], 30)])[None]
    premultiplied = Image.new("RGBa", (1, 1), (100, 50, 20, 128))  # stored premultiplied: c*a + 255*(1-a)
    yield "RGBa", premultiplied, np.array([[[100 + 255 * 127 / 255, 50 + 127, 20 + 127]]])
    palette_alpha = Image.new("PA", (2, 1))
    palette_alpha.putpalette([10, 20, 30, 240, 240, 240])
    palette_alpha.putdata([(0, 255), (1, 100)])
    yield "PA", palette_alpha, np.array([on_white([10, 20, 30], 255), on_white([240] * 3, 100)])[None]
    yield "1", Image.fromarray(np.array([[True, False, True]])), np.array([[[255] * 3, [0] * 3, [255] * 3]])


@pytest.mark.parametrize("processor_class", BACKENDS)
@pytest.mark.parametrize("mode, image, expected", list(mode_cases()), ids=[case[0] for case in mode_cases()])
def test_every_pil_mode_gives_correct_rgb(processor_class, mode, image, expected):
    expected = np.asarray(expected, float)
    if expected.ndim == 2:  # gray: the same value in R, G and B
        expected = np.repeat(expected[..., None], 3, axis=2)
    actual = raw_rgb(processor_class, image)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=1, rtol=0, err_msg=f"mode {mode}")


def test_16_bit_png_file_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    actual = raw_rgb(FlorenceImageProcessor, str(tmp_path / "deep.png"))
    np.testing.assert_array_equal(actual[..., 0], np.round(values / 257))


# ---------------------------------------------------------------- bounded work on images


def png_header_only(width, height) -> bytes:
    """A PNG whose header claims width x height (1-bit gray) with no pixel data: refusing it must not decode."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [30000, 10000])  # past PIL's own bomb limit, and past only ours
def test_pixel_bomb_is_refused_before_decoding(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(side, side))
    for source in (str(path), path.read_bytes()):
        with pytest.raises(ValueError, match=rf"{side * side:,}|{side * side} pixels") as error:
            FlorenceImageProcessor()(source)
        assert "max_image_pixels" in str(error.value)
    if side == 10000:
        lazy = Image.open(path)
        with pytest.raises(ValueError, match="10000x10000 = 100,000,000 pixels.*max_image_pixels=40,000,000"):
            FlorenceImageProcessorPil()(lazy)
        assert lazy.tile, "the refused image was decoded"


def test_pixel_limit_is_configurable_and_covers_arrays():
    small = FlorenceImageProcessor(max_image_pixels=1000)
    with pytest.raises(ValueError, match="40x30 = 1,200 pixels"):
        small(Image.new("RGB", (40, 30)))
    with pytest.raises(ValueError, match="max_image_pixels=1,000"):
        small(np.zeros((30, 40, 3), np.uint8))
    assert small(np.zeros((20, 40, 3), np.uint8), return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="positive integer"):
        FlorenceImageProcessor(max_image_pixels=0)
    assert "max_image_pixels" in FlorenceImageProcessor(max_image_pixels=77).to_dict()


def test_unloaded_jpeg_is_decoded_at_reduced_scale(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((100, 100, 1))).astype(np.uint8)  # 1200x1600
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    processor = FlorenceImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    lazy = Image.open(tmp_path / "big.jpg")
    drafted = processor(lazy, return_tensors="pt")["pixel_values"]
    assert lazy.size == (200, 150)  # 1/8 scale: the smallest at least twice the 64-pixel target
    full = processor(Image.open(tmp_path / "big.jpg").convert("RGB"), return_tensors="pt")["pixel_values"]  # loaded: no draft
    assert (drafted - full).abs().mean() < 0.05
    torch.testing.assert_close(processor(str(tmp_path / "big.jpg"), return_tensors="pt")["pixel_values"], drafted)


class ResizeRecorder:
    """Wraps a processor's resize and records the pixels of each input."""

    def __init__(self, processor):
        self.inputs, self.original = [], processor.resize
        processor.resize = self

    def __call__(self, image, *args, **kwargs):
        self.inputs.append(int(np.prod(image.shape[-2:])))
        return self.original(image, *args, **kwargs)


@pytest.mark.parametrize("processor_class", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 100_000), (100_000, 1), (7, 60_001)])
def test_extreme_aspect_ratio_costs_what_the_crop_costs(processor_class, shape):
    processor = processor_class()
    recorder = ResizeRecorder(processor)
    out = processor(Image.new("RGB", shape[::-1], (10, 200, 30)), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 224, 224)
    assert max(recorder.inputs) <= 1000  # the source columns the crop can reach, not 100,000 (nor 224 x 22.4M)
    expected = CLIPImageProcessor()(Image.new("RGB", (50, 50), (10, 200, 30)), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("processor_class, reference", [(FlorenceImageProcessor, CLIPImageProcessor)])
@pytest.mark.parametrize("height, width, exact", [(100, 390, True), (64, 255, True), (20, 2000, False),
                                                  (2000, 20, False), (3, 900, False)])
def test_wide_images_match_clip_exactly_or_within_a_pixel(processor_class, reference, height, width, exact):
    y, x = np.mgrid[0:height, 0:width]
    gray = (127 + 60 * np.sin(x / 7.0) + 60 * np.cos(y / 5.0 + x / 11.0)).astype(np.uint8)
    image = Image.fromarray(np.stack([gray, gray[::-1], 255 - gray], -1))
    settings = dict(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    ours = processor_class(**settings)(image, return_tensors="pt")["pixel_values"]
    theirs = reference(**settings)(image, return_tensors="pt")["pixel_values"]
    difference = (ours - theirs).abs()
    if exact:
        assert difference.max() == 0
    else:  # cut before resizing: within about one output pixel of the whole-image resize
        assert difference.max() < 0.1 and difference.mean() < 0.03


def test_uncropped_resize_caps_the_long_side():
    processor = FlorenceImageProcessor(do_center_crop=False)
    with pytest.raises(ValueError, match=r"gives 22400000x224, over max_resized_edge=8192.*longest_edge"):
        processor(Image.new("RGB", (100_000, 1)))
    clamped = processor(Image.new("RGB", (3000, 100)), size={"shortest_edge": 224, "longest_edge": 448},
                        return_tensors="pt")
    assert clamped["pixel_values"].shape[-2:] == (15, 448)
    with pytest.raises(ValueError, match="longest_edge"):  # the clamp would leave the short side no pixel
        processor(Image.new("RGB", (100_000, 1)), size={"shortest_edge": 224, "longest_edge": 448})
    assert processor(Image.new("RGB", (300, 100)), return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 672)


# ---------------------------------------------------------------- strings are never fetched without opt-in


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


@pytest.mark.parametrize("processor_class", BACKENDS)
def test_urls_need_an_explicit_opt_in(processor_class, fake_web):
    processor = processor_class()
    for url in ("https://example.com/cat.png", "http://example.com/cat.png"):
        with pytest.raises(ValueError, match="allow_urls=True"):
            processor(url)
        with pytest.raises(ValueError, match="allow_urls=True"):
            processor.fetch_images([url])  # Transformers' hook, which would download
    with pytest.raises(ValueError, match="scheme"):
        processor("ftp://example.com/cat.png", allow_urls=True)
    assert fake_web == []
    fetched = processor("https://example.com/cat.png", allow_urls=True, return_tensors="pt")["pixel_values"]
    assert fetched.shape == (1, 3, 224, 224) and fake_web == ["https://example.com/cat.png"]
    with pytest.raises(ValueError, match="call-time"):
        processor_class(allow_urls=True)
    assert "allow_urls" not in processor.to_dict()


def test_strings_are_local_paths_or_data_uris(tmp_path, fake_web):
    Image.new("RGB", (40, 30), (0, 0, 255)).save(tmp_path / "http_example.png")
    processor = FlorenceImageProcessor()
    from_path = processor(str(tmp_path / "http_example.png"), return_tensors="pt")["pixel_values"]
    data_uri = "data:image/png;base64," + base64.b64encode((tmp_path / "http_example.png").read_bytes()).decode()
    torch.testing.assert_close(processor(data_uri, return_tensors="pt")["pixel_values"], from_path)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        processor(str(tmp_path / "missing.png"))
    assert fake_web == []


def test_processor_and_video_urls_need_the_opt_in(tmp_path, fake_web, video_writer):
    processor = FlorenceProcessor.from_defaults(image_size=32, num_frames=2)
    with pytest.raises(ValueError, match="allow_urls=True"):
        processor(images="https://example.com/cat.png")
    with pytest.raises(ValueError, match="allow_urls=True"):
        processor(videos="https://example.com/clip.mp4")
    assert fake_web == []
    assert processor(images="https://example.com/cat.png", allow_urls=True)["pixel_values"].shape == (1, 3, 32, 32)
    video_writer(tmp_path / "clip.mp4")
    served = (tmp_path / "clip.mp4").read_bytes()
    urllib.request.urlopen = lambda url, timeout=None: io.BytesIO(served)  # monkeypatch restores it
    out = processor(videos="https://example.com/clip.mp4", allow_urls=True)
    assert out["pixel_values_videos"].shape == (1, 2, 3, 32, 32)


# ---------------------------------------------------------------- video: bounded decoding


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


# ---------------------------------------------------------------- tokenizer


SPECIAL_TEXTS = [
    "a photo of a <|endoftext|> cat",
    "<|startoftext|>a dog<|endoftext|>",
    "a <start_of_text> b <END_OF_TEXT> c",
    "<end_of_text>",
    "!!<end_of_text> not special after punctuation",
    "x<|endoftext|>y",
    "<start_of_text><end_of_text>",
    "it's <End_Of_Text>'s",
    "word " * 80 + "<end_of_text>",
]


@pytest.fixture(scope="module")
def processor():
    return FlorenceProcessor.from_defaults(image_size=32, num_frames=2)


def test_special_token_strings_give_open_clip_ids(processor):
    encoded = processor(text=SPECIAL_TEXTS, padding="max_length")
    ours = torch.where(encoded["attention_mask"].bool(), encoded["input_ids"], 0)
    torch.testing.assert_close(ours, open_clip_tokenize(SPECIAL_TEXTS))
    first = encoded["input_ids"][0, : encoded["attention_mask"][0].sum()].tolist()
    assert first.count(49407) == 1 and first[-1] == 49407  # the literal does not end the caption early


def test_florence_tokenizer_reads_special_strings_as_text(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tokenizer, FlorenceTokenizer)
    ids = tokenizer("a <|endoftext|> cat")["input_ids"]
    assert ids.count(49407) == 1 and ids[-1] == 49407


def break_missing(folder):
    (folder / "tokenizer.json").unlink()


def break_json(folder):
    (folder / "tokenizer.json").write_text('{"model": ')


def break_vocab(folder):
    content = json.loads((folder / "tokenizer.json").read_text())
    content["model"]["vocab"], content["model"]["merges"] = {}, []
    (folder / "tokenizer.json").write_text(json.dumps(content))


def break_merges(folder):
    content = json.loads((folder / "tokenizer.json").read_text())
    content["model"]["merges"] = content["model"]["merges"][:100]
    (folder / "tokenizer.json").write_text(json.dumps(content))


def break_config(folder):
    (folder / "tokenizer_config.json").write_text("not json")


def break_legacy(folder):  # a folder saved with Transformers' CLIPTokenizer class
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "CLIPTokenizer"}))
    (folder / "tokenizer.json").unlink()


@pytest.mark.parametrize(
    "damage, message",
    [(break_missing, "tokenizer.json is missing"), (break_json, "tokenizer.json is not readable JSON"),
     (break_vocab, "tokenizer.json has no BPE vocabulary"), (break_merges, "tokenizer.json.*wrong merges"),
     (break_config, "tokenizer_config.json is not readable JSON"), (break_legacy, "tokenizer.json is missing")],
)
def test_broken_tokenizer_folders_fail_naming_the_file(processor, tmp_path, damage, message):
    processor.save_pretrained(tmp_path / "good")
    shutil.copytree(tmp_path / "good", tmp_path / "bad")
    damage(tmp_path / "bad")
    loaders = [FlorenceProcessor.from_pretrained, AutoProcessor.from_pretrained]
    # AutoTokenizer reads tokenizer_config.json itself before calling our class (a bare JSONDecodeError), and for a
    # legacy folder it loads Transformers' own CLIPTokenizer: the two cases only our loaders can name the file in
    if damage not in (break_legacy, break_config):
        loaders.append(AutoTokenizer.from_pretrained)
    for loader in loaders:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            loader(tmp_path / "bad")
    assert len(FlorenceProcessor.from_pretrained(tmp_path / "good").tokenizer) == 49408
