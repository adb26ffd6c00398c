"""Tests of `modeling_florence/image_loading_florence.py`."""

import base64
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_florence import FlorenceImageProcessor, FlorenceImageProcessorPil
from modeling_florence.image_loading_florence import check_pixels

from florence_testing import BACKENDS


RAW = dict(do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)  # pixel values untouched


def raw_rgb(processor_class, image) -> np.ndarray:
    """The RGB values a processor gives an image, as (H, W, 3) integers."""
    out = processor_class(**RAW)(image, return_tensors="pt")["pixel_values"][0]
    return out.permute(1, 2, 0).round().to(torch.int64).numpy()


def on_white(color, alpha):
    """Independent reference for compositing onto white: c * a + 255 * (1 - a)."""
    return np.asarray(color, float) * alpha / 255 + 255 * (1 - alpha / 255)


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


def png_header_only(width, height) -> bytes:
    """A PNG whose header claims width x height (1-bit gray) with no pixel data: refusing it must not decode."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(0, 0), (0, 5), (5, 0), (-1, 5)])
def test_an_image_without_pixels_is_refused(width, height):
    with pytest.raises(ValueError, match=f"{width}x{height}: an image needs at least one pixel"):
        check_pixels(width, height, None)


def test_sizes_within_the_limit_pass():
    check_pixels(1, 1, 1)
    with pytest.raises(ValueError, match="max_image_pixels=1"):
        check_pixels(1, 2, 1)


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
