"""Tests of `modeling_florence/data_florence.py`."""

import csv
import io
import json
import tarfile
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from modeling_florence import video_processing_florence
from modeling_florence.data_florence import (
    load_coco_generation,
    load_generation_jsonl,
    load_video_folder,
    load_coco_detection,
    load_image_folder,
    load_image_text_pairs,
    load_vqav2,
)


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


def write_image(path, colour=(200, 30, 30), size=(24, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_corrupt(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG not really")
    return path


def write_truncated_jpeg(path):
    """A JPEG cut in half: `Image.verify` accepts it, only a full decode finds it broken."""
    buffer = io.BytesIO()
    Image.effect_noise((48, 48), 80).convert("RGB").save(buffer, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def add_member(archive, name, payload: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def png_bytes(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


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


def test_image_folder(tmp_path):
    write_image(tmp_path / "circle" / "a.png")
    write_image(tmp_path / "circle" / "b.png")
    write_image(tmp_path / "square" / "c.jpg")
    write_corrupt(tmp_path / "square" / "broken.png")
    with pytest.warns(UserWarning, match=r"skipped 1 of 4 rows \(unreadable image: 1"):
        data = load_image_folder(tmp_path)
    assert data.features["label"].names == ["circle", "square"] and data["label"] == [0, 0, 1]
    assert data[0]["image"].size == (24, 20)
    with pytest.raises(ValueError, match="broken.png: unreadable image"):
        load_image_folder(tmp_path, strict=True)


@pytest.mark.parametrize("source", ["jsonl", "csv"])
def test_pairs_from_tables(tmp_path, source):
    write_image(tmp_path / "img" / "1.png")
    write_image(tmp_path / "img" / "2.png", colour=(0, 0, 255))
    write_corrupt(tmp_path / "img" / "3.png")
    rows = [{"file": "img/1.png", "caption": "a red box", "short": "false"},
            {"file": "img/2.png", "caption": "blue", "short": "true"},
            {"file": "img/3.png", "caption": "broken", "short": "false"}]
    table = tmp_path / f"pairs.{source}"
    if source == "jsonl":
        table.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        with open(table, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    with pytest.warns(UserWarning, match="skipped 1"):
        data = load_image_text_pairs(source, table, image_column="file", text_column="caption", label_column="short")
    assert list(data.features) == ["image", "text", "is_label"]
    assert data["text"] == ["a red box", "blue"] and data["is_label"] == [False, True]
    with pytest.raises(ValueError, match=r"no column\(s\) \['text'\]; columns found: \['caption', 'file', 'short'\]"):
        load_image_text_pairs(source, table, image_column="file")
    with pytest.raises(ValueError, match=r"line \d \(.*3.png\): unreadable image"):
        load_image_text_pairs(source, table, image_column="file", text_column="caption", strict=True)


def test_webdataset_shards_in_memory_and_streamed(tmp_path):
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as archive:
            add_member(archive, f"s{shard}a.png", png_bytes((255, 0, 0)))
            add_member(archive, f"s{shard}a.txt", f"red {shard}".encode())
            add_member(archive, f"s{shard}b.png", png_bytes((0, 255, 0)))
            add_member(archive, f"s{shard}b.json", json.dumps({"caption": f"green {shard}"}).encode())
            add_member(archive, f"s{shard}c.png", b"corrupt")
            add_member(archive, f"s{shard}c.txt", b"broken")
    with pytest.warns(UserWarning, match="skipped 2"):
        data = load_image_text_pairs("webdataset", tmp_path)
    assert sorted(data["text"]) == ["green 0", "green 1", "red 0", "red 1"]
    streamed = load_image_text_pairs("webdataset", tmp_path / "shard-*.tar", streaming=True)
    with pytest.warns(UserWarning, match="skipped") as caught:
        texts = sorted(row["text"] for row in streamed)
    assert sum(int(str(w.message).split("skipped ")[1].split()[0]) for w in caught) == 2  # reported per shard
    assert texts == sorted(data["text"])


def test_coco_detection(tmp_path):
    write_image(tmp_path / "images" / "1.jpg", size=(64, 48))
    write_corrupt(tmp_path / "images" / "2.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "2.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 10, "image_id": 1, "bbox": [1, 2, 10, 12], "category_id": 7, "area": 120},
                        {"id": 11, "image_id": 1, "bbox": [20, 5, 8, 8], "category_id": 3}],
        "categories": [{"id": 3, "name": "square"}, {"id": 7, "name": "circle"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    with pytest.warns(UserWarning, match="skipped 1"):
        data = load_coco_detection(tmp_path / "instances.json", tmp_path / "images")
    objects = data[0]["objects"]
    category = data.features["objects"]["category"]
    category = getattr(category, "feature", category)
    assert category.names == ["square", "circle"]
    assert objects["category"] == [1, 0] and objects["bbox"][0] == [1, 2, 10, 12] and objects["area"][1] == 64
    coco["annotations"][1]["category_id"] = 5
    (tmp_path / "unknown.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"annotation 11 \(image 1\) has category_id 5, which is not one of .*\[3, 7\]"):
        load_coco_detection(tmp_path / "unknown.json", tmp_path / "images")
    del coco["categories"]
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="categories"):
        load_coco_detection(tmp_path / "bad.json", tmp_path / "images")


def test_florence2_rows_from_a_coco_json_and_a_jsonl(tmp_path):
    """COCO detection -> `<OD>` rows (category + `<loc_..>` box, left to right; the corrupt image skipped and
    counted); jsonl (image, prompt, answer) -> rows whose task is the prompt's task token, `<VQA>` for a question."""
    write_image(tmp_path / "images" / "1.jpg", size=(100, 50))
    write_corrupt(tmp_path / "images" / "2.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 50},
                   {"id": 2, "file_name": "2.jpg", "width": 100, "height": 50}],
        "annotations": [{"id": 10, "image_id": 1, "bbox": [60, 10, 20, 30], "category_id": 7},
                        {"id": 11, "image_id": 1, "bbox": [5, 0, 10, 10], "category_id": 3}],
        "categories": [{"id": 3, "name": "square"}, {"id": 7, "name": "circle"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    with pytest.warns(UserWarning, match="skipped 1"):
        (row,) = load_coco_generation(tmp_path / "instances.json", tmp_path / "images")
    assert (row["task"], row["prompt"], row["width"], row["height"]) == ("<OD>", "<OD>", 100, 50)
    assert row["target"] == "square<loc_50><loc_0><loc_150><loc_200>circle<loc_600><loc_200><loc_800><loc_800>"
    lines = [{"image": "1.jpg", "prompt": "<CAPTION_TO_PHRASE_GROUNDING>a red box", "answer": "a red box<loc_1>"},
             {"image": "1.jpg", "prompt": "what colour is it?", "answer": "red", "answers": ["red", "dark red"]},
             {"image": "2.jpg", "prompt": "<CAPTION>", "answer": "a box"}]
    (tmp_path / "images" / "rows.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    with pytest.warns(UserWarning, match="skipped 1 of 3 rows .*unreadable image"):
        rows = load_generation_jsonl(tmp_path / "images" / "rows.jsonl")
    assert rows["task"] == ["<CAPTION_TO_PHRASE_GROUNDING>", "<VQA>"] and rows["answers"][1] == ["red", "dark red"]
    assert rows["target"] == ["a red box<loc_1>", "red"] and rows["width"] == [100, 100]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "1.jpg", "question": "?"}))
    with pytest.raises(ValueError, match="no column.*'prompt', 'answer'"):
        load_generation_jsonl(tmp_path / "bad.jsonl", tmp_path / "images")


def test_vqav2(tmp_path):
    write_image(tmp_path / "images" / "COCO_val2014_000000000042.jpg")
    questions = {"questions": [{"image_id": 42, "question": "what colour?", "question_id": 420}]}
    annotations = {"annotations": [{"question_id": 420, "question_type": "what color",
                                    "multiple_choice_answer": "red",
                                    "answers": [{"answer": "red"}] * 9 + [{"answer": "orange"}]}]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    data = load_vqav2(tmp_path / "q.json", tmp_path / "a.json", tmp_path / "images")
    row = data[0]
    assert row["question"] == "what colour?" and len(row["answers"]) == 10 and row["answer"] == "red"


def test_video_folder(tmp_path, video_writer):
    video_writer(tmp_path / "a.mp4", frames=6)
    video_writer(tmp_path / "b.mp4", frames=6)
    (tmp_path / "c.mp4").write_text("not a video")
    (tmp_path / "labels.csv").write_text("path,label\na.mp4,waving\nb.mp4,jumping\nc.mp4,waving\n")
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 rows \(unreadable video: 1"):
        data = load_video_folder(tmp_path, tmp_path / "labels.csv")
    assert data.features["label"].names == ["jumping", "waving"] and data["caption"] == ["waving", "jumping"]
    decoded = load_video_folder(tmp_path, tmp_path / "labels.csv", decode=True, num_frames=4, strict=False)
    assert len(decoded[0]["frames"]) == 4
    with pytest.raises(ValueError, match="c.mp4"):
        load_video_folder(tmp_path, tmp_path / "labels.csv", strict=True)
    with pytest.raises(ValueError, match="no column"):
        load_video_folder(tmp_path, tmp_path / "labels.csv", label_column="action")


def test_truncated_images_are_decoded_fully_and_skipped(tmp_path):
    write_image(tmp_path / "circle" / "a.png")
    write_truncated_jpeg(tmp_path / "circle" / "cut.jpg")
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 rows \(unreadable image: 1; e.g. .*cut.jpg"):
        assert len(load_image_folder(tmp_path)) == 1
    with pytest.raises(ValueError, match=r"cut.jpg: unreadable image \(image file is truncated"):
        load_image_folder(tmp_path, strict=True)


def test_rows_without_a_usable_caption_are_skipped_and_counted(tmp_path):
    write_image(tmp_path / "a.png")
    lines = [json.dumps({"image": "a.png", "text": text}).encode() for text in ("kept", None, 5, "  ", ["a"])]
    lines.append(b'{"image": "a.png", "text": "caf\xe9 in latin-1"}')  # not UTF-8
    lines.append(json.dumps({"image": None, "text": "no image"}).encode())
    (tmp_path / "pairs.jsonl").write_bytes(b"\n".join(lines))
    with pytest.warns(UserWarning) as caught:
        data = load_image_text_pairs("jsonl", tmp_path / "pairs.jsonl")
    assert data["text"] == ["kept"]
    message = str(caught[0].message)
    assert "skipped 6 of 7 rows" in message and "caption not valid UTF-8: 1" in message
    assert "no caption (null, empty or not a string: None): 1" in message and "no image path (None): 1" in message
    with pytest.raises(ValueError, match=r"line 2: no caption \(null"):
        load_image_text_pairs("jsonl", tmp_path / "pairs.jsonl", strict=True)
    (tmp_path / "pairs.csv").write_bytes(b"image,text\na.png,kept\na.png,\na.png,caf\xe9\n")
    with pytest.warns(UserWarning, match=r"skipped 2 of 3 rows"):
        assert load_image_text_pairs("csv", tmp_path / "pairs.csv")["text"] == ["kept"]


@pytest.mark.parametrize("source, content, where", [
    ("jsonl", '{"image": "a.png", "text": "ok"}\n{"image": "a.png", "text": \n', r"pairs.jsonl:2: malformed JSON"),
    ("jsonl", '{"image": "a.png", "text": "ok"}\n\n["a.png", "x"]\n', r"pairs.jsonl:3: a row must be a JSON object"),
    ("csv", "image,text\na.png,ok\na.png,one,extra\n", r"pairs.csv:3: malformed row, not the 2 fields"),
    ("csv", "image,text\na.png\n", r"pairs.csv:2: malformed row"),
])
def test_malformed_table_rows_name_the_file_and_line(tmp_path, source, content, where):
    write_image(tmp_path / "a.png")
    (tmp_path / f"pairs.{source}").write_text(content)
    with pytest.raises(ValueError, match=where):
        load_image_text_pairs(source, tmp_path / f"pairs.{source}")


def test_webdataset_captions_that_are_not_text_are_skipped(tmp_path):
    with tarfile.open(tmp_path / "shard-0.tar", "w") as archive:
        add_member(archive, "a.png", png_bytes((255, 0, 0)))
        add_member(archive, "a.txt", b"red")
        add_member(archive, "b.png", png_bytes((0, 255, 0)))
        add_member(archive, "b.txt", b"gr\xfcn")  # latin-1, not UTF-8
        add_member(archive, "c.png", png_bytes((0, 0, 255)))
        add_member(archive, "c.json", json.dumps({"caption": None}).encode())
        add_member(archive, "d.png", png_bytes((0, 0, 255)))
        add_member(archive, "d.json", b"{not json")
    with pytest.warns(UserWarning, match=r"skipped 3 of 4 rows \(caption not valid UTF-8: 1, no caption"):
        assert load_image_text_pairs("webdataset", tmp_path)["text"] == ["red"]
    with pytest.raises(ValueError, match="shard-0.tar:b: caption not valid UTF-8"):
        load_image_text_pairs("webdataset", tmp_path, strict=True)
