"""Tests of `modeling_florence/processing_florence_vqa.py`."""

import math

import pytest
import torch
from PIL import Image

import modeling_florence as mf
from modeling_florence.processing_florence_vqa import build_answer_vocabulary, post_process_vqa, soft_scores

from florence_testing import build


LABEL2ID = {"red": 0, "blue": 1}


@pytest.fixture(scope="module")
def processor():
    return mf.FlorenceVQAProcessor.from_defaults(image_size=32, answer_vocabulary=["yes", "no", "red", "2", "circle"])


def images(count):
    return [Image.new("RGB", (40, 36), (30 * i, 90, 200)) for i in range(count)]


def test_vqav2_answer_dicts_are_read_like_strings():
    dicts = [{"answer": "Red", "answer_confidence": "yes", "answer_id": i} for i in range(3)]
    torch.testing.assert_close(soft_scores(dicts, LABEL2ID, 2)[0], soft_scores(["red"] * 3, LABEL2ID, 2)[0])
    assert build_answer_vocabulary([dicts, ["blue"]]) == ["red", "blue"]


@pytest.mark.parametrize("answers", [None, [None, "red"], [{"confidence": "yes"}], "red", [3]])
def test_missing_or_malformed_answers_are_refused(answers):
    with pytest.raises(ValueError, match="answer"):
        soft_scores(answers, LABEL2ID, 2)


def test_a_vocabulary_shorter_than_the_model_is_refused():
    with pytest.raises(ValueError, match=r"no entry for 2 of them \(e.g. id 2\)"):
        post_process_vqa(torch.tensor([[0.0, 0.0, 5.0, 1.0]]), {0: "red", 1: "blue"}, top_k=2)
    assert post_process_vqa(torch.tensor([[0.0, 5.0]]), {0: "red", 1: "blue"})[0][0]["answer"] == "blue"


# ----------------------------------------------------------------------------------------------------------------------
# Processor
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "normalised"),
    [("Two", "2"), ("the Red one.", "red 1"), ("  Yes!  ", "yes"), ("an apple", "apple"), ("1,000", "1000"),
     ("3.5", "3.5"), ("dont know", "don't know"), ("top-left", "top left"), ("It's", "its")],
)
def test_answer_normalisation(raw, normalised):
    assert mf.normalize_answer(raw) == normalised


def test_answer_vocabulary_and_soft_scores():
    answer_lists = [["Yes"] * 7 + ["no"] * 3, ["two", "2", "2", "3"], ["red"], ["the red"]]
    vocabulary = mf.build_answer_vocabulary(answer_lists)
    assert vocabulary == ["yes", "2", "no", "red", "3"]  # by count, ties alphabetical
    assert mf.build_answer_vocabulary(answer_lists, top_n=2) == ["yes", "2"]
    assert mf.build_answer_vocabulary(answer_lists, min_count=3) == ["yes", "2", "no"]
    label2id = {answer: index for index, answer in enumerate(vocabulary)}
    scores, dropped = soft_scores(["two", "2", "2", "3", "blue", "blue"], label2id, len(label2id))
    assert dropped == 2
    torch.testing.assert_close(scores, torch.tensor([0.0, 0.9, 0.0, 0.0, 0.3]))
    scores, _ = soft_scores(["yes"] * 4 + ["no"] * 2, label2id, len(label2id))
    assert scores[0] == 1.0 and math.isclose(scores[2].item(), 0.6, rel_tol=1e-6)


def test_processor_returns_pairs_and_soft_labels_and_counts_dropped_answers(processor):
    before = dict(processor.answer_counts)
    out = processor(text=["is there a red circle?", "how many shapes?"], images=images(2),
                    answers=[["yes"] * 9 + ["maybe"], ["two"] * 2 + ["3"] * 8])
    assert out["pixel_values"].shape == (2, 3, 32, 32) and out["input_ids"].shape[0] == 2
    torch.testing.assert_close(out["labels"], torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 0.6, 0]]))
    assert processor.answer_counts["dropped"] - before["dropped"] == 9  # "maybe" once, "3" eight times
    assert processor.answer_counts["kept"] - before["kept"] == 11
    model = build(num_labels=5, id2label=dict(enumerate(processor.answer_vocabulary)))
    with torch.no_grad():
        output = model(**out)
    results = processor.post_process_vqa(output, top_k=3)
    assert len(results) == 2 and [len(r) for r in results] == [3, 3]
    probabilities = output.logits.sigmoid()
    for row, result in enumerate(results):
        assert result[0]["answer"] == processor.answer_vocabulary[int(probabilities[row].argmax())]
        assert [r["score"] for r in result] == sorted((r["score"] for r in result), reverse=True)
        assert math.isclose(result[0]["score"], probabilities[row].max().item(), rel_tol=1e-6)
    assert mf.post_process_vqa(output.logits, model.config.id2label)[0][0]["answer"] == results[0][0]["answer"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ["what colour?"]}, "no images"),
        ({"text": ["what colour?", "  "], "images": images(2)}, r"Question\(s\) \[1\] are empty"),
        ({"text": ["a?", "b?"], "images": images(3)}, "3 images but 2 questions"),
        ({"text": ["a?", "b?"], "images": images(2), "answers": [["yes"]]}, "one list of annotator answers"),
        ({"text": ["a?"], "images": images(1), "answers": ["yes"]}, "one list of annotator answers|list of strings"),
        ({"images": images(1), "answers": [["yes"]]}, "without their questions"),
    ],
)
def test_processor_bad_input(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(**kwargs)


def test_processor_saves_its_answer_vocabulary(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = mf.FlorenceVQAProcessor.from_pretrained(tmp_path)
    assert loaded.answer_vocabulary == processor.answer_vocabulary
    with pytest.raises(ValueError, match="answer_vocabulary"):
        mf.FlorenceVQAProcessor.from_defaults(image_size=32)(text=["a?"], images=images(1), answers=[["yes"]])


def test_processor_reads_one_image_and_datasets_columns(processor):
    from datasets import Dataset, Image as ImageFeature

    single = processor(text="what colour is it?", images=images(1)[0], answers=[["red"] * 10])
    assert single["pixel_values"].shape[0] == 1 and single["labels"][0, 2] == 1.0
    table = Dataset.from_dict({"image": images(3), "question": ["a?", "b?", "c?"]}).cast_column("image", ImageFeature())
    out = processor(text=table["question"], images=table["image"])  # `datasets` columns, not lists
    assert out["pixel_values"].shape[0] == 3


def test_from_defaults_takes_the_normalisation_of_the_source_folder(tmp_path):
    """The VQA processor of a model whose towers come from a folder (`FlorenceForVQA.from_florence`) normalises
    images with that folder's saved mean/std (Florence-2: ImageNet's, in `preprocessor_config.json` or nested in
    `processor_config.json`), not CoSwin's CLIP default."""
    import json

    from modeling_florence.image_processing_florence import NORMALIZATIONS, source_normalization

    imagenet_mean, imagenet_std = NORMALIZATIONS["imagenet"]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": imagenet_mean, "image_std": imagenet_std})
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "processor_config.json").write_text(
        json.dumps({"image_processor": {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}})
    )
    assert source_normalization(tmp_path / "a") == {"normalization": "imagenet"}
    assert source_normalization(tmp_path / "b") == {"image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    assert source_normalization(tmp_path) == {} and source_normalization("no/such/folder") == {}
    vqa = mf.FlorenceVQAProcessor.from_defaults(image_size=32, source=tmp_path / "a")
    assert list(vqa.image_processor.image_mean) == pytest.approx(imagenet_mean)
    assert list(vqa.image_processor.image_std) == pytest.approx(imagenet_std)
    custom = mf.FlorenceVQAProcessor.from_defaults(image_size=32, source=str(tmp_path / "b"))
    assert list(custom.image_processor.image_mean) == pytest.approx([0.5] * 3)
    default = mf.FlorenceVQAProcessor.from_defaults(image_size=32)
    assert list(default.image_processor.image_mean) == pytest.approx(NORMALIZATIONS["clip"][0])
