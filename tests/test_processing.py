"""Tokenizer, image/video processors and FlorenceProcessor: parity with open_clip and Transformers' CLIP, offline."""

import numpy as np
import pytest
import torch
from open_clip.tokenizer import tokenize as open_clip_tokenize
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, CLIPImageProcessor, pipeline
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from conversion.build_tokenizer import build_tokenizer
from modeling_florence import (
    FlorenceImageProcessor,
    FlorenceImageProcessorPil,
    FlorenceModel,
    FlorenceProcessor,
    FlorenceVideoProcessor,
    default_tokenizer_path,
    load_preset,
    text_label,
)

PLAIN_TEXTS = [
    "a photo of a cat.",
    "Café crème brûlée à la française",
    "🙂 emoji 👍🏽 test 🚀",
    "日本語のテキスト and 中文",
    "Hello,   World!!  123 4567 3.14",
    "it's the cat's toy, isn't it? (yes) [no] {maybe}",
    "",
    "   ",
    "naïve façade ÆØÅ ß",
    "tab\tnew\nline",
    "word " * 120,  # far longer than 77 tokens
]
TEXTS_NEEDING_CLEANUP = ["&amp; html &lt;tags&gt;", "Ｆｕｌｌｗｉｄｔｈ ﬁ ligature", "mojibake: schÃ¶n"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_tokenizer_path())


@pytest.fixture(scope="module")
def processor():
    return FlorenceProcessor.from_defaults(image_size=64, num_frames=4)


def padded_like_open_clip(input_ids, attention_mask):
    """open_clip pads with 0; ours (like Transformers' CLIP) with <|endoftext|>: compare the real tokens."""
    return torch.where(attention_mask.bool(), input_ids, torch.zeros_like(input_ids))


def test_shipped_tokenizer_matches_open_clip_ids(tokenizer):
    assert (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id) == (49408, 49406, 49407)
    encoded = tokenizer(PLAIN_TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ours = padded_like_open_clip(encoded["input_ids"], encoded["attention_mask"])
    torch.testing.assert_close(ours, open_clip_tokenize(PLAIN_TEXTS))


def test_truncation_keeps_end_of_text_last(tokenizer):
    encoded = tokenizer(["word " * 120], truncation=True, max_length=77, return_tensors="pt")["input_ids"][0]
    assert encoded.shape[0] == 77 and encoded[0] == 49406 and encoded[-1] == 49407


def test_builder_reproduces_the_shipped_files(tokenizer, tmp_path):
    built = build_tokenizer()
    built.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").read_text() == (default_tokenizer_path() / "tokenizer.json").read_text()


def test_processor_cleans_text_like_open_clip(processor):
    texts = PLAIN_TEXTS + TEXTS_NEEDING_CLEANUP
    encoded = processor(text=texts, padding="max_length")
    assert encoded["input_ids"].shape == (len(texts), 77)
    torch.testing.assert_close(
        padded_like_open_clip(encoded["input_ids"], encoded["attention_mask"]), open_clip_tokenize(texts)
    )


def test_unicl_labels_are_stable_and_merge_identical_texts(processor):
    labels = processor(text=["A red circle", "a  red CIRCLE ", "a blue circle"], return_labels=True)["labels"]
    assert labels.dtype == torch.int64 and labels[0] == labels[1] != labels[2]
    assert text_label("a red circle") == 918540978343227445  # fixed forever: labels must not drift across releases
    with pytest.raises(ValueError, match="needs text"):
        processor(images=[Image.new("RGB", (64, 64))], return_labels=True)


def images():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 255, (180, 120), dtype=np.uint8), "L"),
        Image.fromarray(rng.integers(0, 255, (240, 240, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 255, (500, 260, 3), dtype=np.uint8)).convert("P"),
        rng.integers(0, 255, (90, 70, 3), dtype=np.uint8),  # numpy, channels last
        torch.randint(0, 255, (3, 120, 150), dtype=torch.uint8),  # torch, channels first
    ]


@pytest.mark.parametrize(
    "ours, reference", [(FlorenceImageProcessor, CLIPImageProcessor), (FlorenceImageProcessorPil, CLIPImageProcessorPil)]
)
def test_image_processor_matches_clip(ours, reference):
    settings = dict(size={"shortest_edge": 96}, crop_size={"height": 96, "width": 96})
    for image in images():
        expected = reference(**settings)(image, return_tensors="pt")["pixel_values"]
        actual = ours(**settings)(image, return_tensors="pt")["pixel_values"]
        assert actual.shape == (1, 3, 96, 96)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    batch = ours(**settings)(images()[:3], return_tensors="pt")["pixel_values"]
    assert batch.shape == (3, 3, 96, 96)


def test_image_processor_options_and_errors():
    image = images()[0]  # 300x400
    kept = FlorenceImageProcessor(do_center_crop=False, size={"shortest_edge": 150})(image, return_tensors="pt")
    assert kept["pixel_values"].shape == (1, 3, 150, 200)
    imagenet = FlorenceImageProcessor(normalization="imagenet")
    assert imagenet.image_mean == pytest.approx([0.485, 0.456, 0.406])
    with pytest.raises(ValueError, match="normalization must be one of"):
        FlorenceImageProcessor(normalization="cifar")
    with pytest.raises((ValueError, TypeError), match="supported|Invalid|type"):
        FlorenceImageProcessor()(object())


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


def test_processor_roundtrip_auto_classes_and_pipeline(processor, tmp_path):
    torch.manual_seed(0)
    FlorenceModel(load_preset("florence-tiny")).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, FlorenceProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), FlorenceImageProcessor)
    assert reloaded.video_processor.num_frames == 4
    image = Image.new("RGB", (80, 70), (200, 30, 30))
    original = processor(text=["a red square"], images=[image])
    again = reloaded(text=["a red square"], images=[image])
    for key in ("input_ids", "attention_mask", "pixel_values"):
        torch.testing.assert_close(again[key], original[key])
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path))
    scores = classifier(image, candidate_labels=["circle", "square", "star"])
    assert sorted(s["label"] for s in scores) == ["circle", "square", "star"]
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)
