"""Florence Shapes: deterministic, the right columns per task, and content that matches its labels."""

from collections import Counter

import numpy as np
import pytest

from modeling_florence import shapes


@pytest.fixture(scope="module")
def pairs():
    return shapes.build_pairs(num_train=400, num_validation=60, num_test=60, seed=3)


def test_same_seed_same_bytes_other_seed_other_images(pairs):
    again = shapes.build_pairs(num_train=400, num_validation=60, num_test=60, seed=3)
    for split in ("train", "test"):
        assert again[split]["text"] == pairs[split]["text"]
        assert np.array_equal(np.asarray(again[split][5]["image"]), np.asarray(pairs[split][5]["image"]))
    other = shapes.build_pairs(num_train=10, num_validation=1, num_test=1, seed=4)
    assert not np.array_equal(np.asarray(other["train"][0]["image"]), np.asarray(pairs["train"][0]["image"]))
    # one example's content does not depend on how many others were generated
    smaller = shapes.build_pairs(num_train=10, num_validation=1, num_test=1, seed=3)
    assert smaller["train"]["text"] == pairs["train"]["text"][:10]


def test_worker_processes_generate_the_same_rows_as_one_process(monkeypatch):
    serial = shapes.build_vqa(num_train=90, num_validation=0, num_test=7, seed=2)
    monkeypatch.setattr(shapes, "PARALLEL_MIN_EXAMPLES", 1)
    monkeypatch.setattr(shapes, "_generation_processes", lambda count: 2)
    forked = shapes.build_vqa(num_train=90, num_validation=0, num_test=7, seed=2)
    for split in ("train", "test"):
        assert forked[split].data.equals(serial[split].data)
    assert shapes._GENERATION is None


def test_pairs_have_duplicates_labels_and_distinct_held_out_captions(pairs):
    train = pairs["train"]
    assert {len(pairs[s]) for s in ("validation", "test")} == {60} and len(train) == 400
    counts = Counter(train["text"])
    assert counts.most_common(1)[0][1] >= 3  # identical captions: UniCL positives
    labels = [t for t, is_label in zip(train["text"], train["is_label"]) if is_label]
    assert labels and all(1 <= len(t.split()) <= 2 for t in labels)
    assert all(t.startswith("a ") and " at the " in t for t in pairs["test"]["text"])
    assert len(set(pairs["test"]["text"])) > 40  # detailed captions are mostly distinct
    assert np.asarray(train[0]["image"]).shape == (64, 64, 3)


def test_pair_vocabulary_chooses_the_training_colours_and_shapes():
    """"classes": the 30 zero-shot classes' 6 colours x 5 shapes; "all": every colour and shape of Shapes (what the
    adapters' tasks use); held-out pairs are the same either way (the retrieval benchmark)."""
    def words(dataset):
        return set(" ".join(dataset["text"]).replace(",", " ").split())

    classes = shapes.build_pairs(num_train=300, num_validation=0, num_test=20, seed=1)
    every = shapes.build_pairs(num_train=300, num_validation=0, num_test=20, seed=1, vocabulary="all")
    unseen = (set(shapes.SHAPES) - set(shapes.CLASS_SHAPES)) | (set(shapes.COLOURS) - set(shapes.CLASS_COLOURS))
    assert not words(classes["train"]) & unseen
    assert unseen <= words(every["train"])
    assert every["test"]["text"] == classes["test"]["text"]
    with pytest.raises(ValueError, match="vocabulary"):
        shapes.build_pairs(num_train=1, num_validation=0, num_test=0, vocabulary="some")


def dominant_colour(image: np.ndarray, obj_mask: np.ndarray) -> str:
    mean = image[obj_mask].mean(axis=0)
    return min(shapes.COLOURS, key=lambda name: np.abs(np.asarray(shapes.COLOURS[name]) - mean).sum())


def test_classification_images_show_their_class():
    data = shapes.build_classification(num_train=60, num_validation=30, num_test=30)
    names = data["train"].features["label"].names
    assert len(names) >= 20 and names[0] == "red circle"
    assert Counter(data["train"]["label"]) == Counter({label: 2 for label in range(30)})
    rng = np.random.default_rng(0)
    for label in range(0, 30, 7):  # rendering a known object gives its colour back
        colour, shape = names[label].split()
        obj = shapes.sample_object(rng, 64, shapes=(shape,), colours=(colour,))
        image = shapes.render([obj], 64, rng)
        assert dominant_colour(image, shapes.shape_mask(obj, 64)) == colour


def test_detection_boxes_enclose_the_drawn_objects():
    data = shapes.build_detection(num_train=20, num_validation=2, num_test=2, image_size=96)
    for row in data["train"]:
        objects = row["objects"]
        assert 1 <= len(objects["bbox"]) <= 6
        for x, y, w, h in objects["bbox"]:
            assert 0 <= x and 0 <= y and x + w <= row["width"] and y + h <= row["height"] and w > 2 and h > 2
        assert len(set(row["objects"]["id"])) == len(objects["bbox"])
    # a tight box is exactly the extent of the mask
    obj = shapes.ShapeObject("square", "red", cx=40, cy=30, radius=10)
    x, y, w, h = shapes.tight_box(obj, 96)
    ys, xs = np.nonzero(shapes.shape_mask(obj, 96))
    assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_vqa_answers_and_soft_scores():
    data = shapes.build_vqa(num_train=50, num_validation=5, num_test=5)
    row = data["train"][0]
    assert len(row["answers"]) == 10 and row["question_type"] in ("colour", "shape", "count", "position", "existence")
    assert set(data["train"]["question_type"]) == {"colour", "shape", "count", "position", "existence"}
    majority = Counter(row["answers"]).most_common(1)[0][0]
    assert shapes.vqa_score(majority, row["answers"]) > 0
    assert shapes.vqa_score("x", ["x"] * 2 + ["y"] * 8) == pytest.approx(0.6)
    assert shapes.vqa_score("x", ["x"] * 4 + ["y"] * 6) == 1.0
    assert shapes.vqa_soft_scores(["a"] * 9 + ["b"]) == {"a": 1.0, "b": pytest.approx(0.3)}
    disagreeing = sum(len(set(r)) > 1 for r in data["train"]["answers"])
    assert disagreeing > 0


def centroid(frame: np.ndarray, colour: str) -> np.ndarray:
    target = np.asarray(shapes.COLOURS[colour])
    ys, xs = np.nonzero(np.abs(frame.astype(int) - target).sum(-1) < 10)
    return np.array([xs.mean(), ys.mean(), len(xs)])


def test_video_motion_matches_its_label():
    data = shapes.build_video(num_train=14, num_validation=7, num_test=7, num_frames=6)
    names = data["train"].features["label"].names
    for row in data["train"]:
        action = names[row["label"]]
        colour = row["caption"].split()[1]
        first, last = (centroid(np.asarray(row["frames"][i]), colour) for i in (0, -1))
        assert len(row["frames"]) == 6 and row["caption"].endswith(action)
        dx, dy, darea = last - first
        expected = {"moving left": dx < -5, "moving right": dx > 5, "moving up": dy < -5, "moving down": dy > 5,
                    "growing": darea > 0, "shrinking": darea < 0, "rotating": abs(dx) < 2 and abs(dy) < 2}
        assert expected[action], (action, dx, dy, darea)


def test_cli_writes_a_loadable_dataset(tmp_path):
    from datasets import load_from_disk

    shapes.main(["--task", "classification", "--output", str(tmp_path / "cls"), "--num-train", "30",
                 "--num-validation", "5", "--num-test", "5"])
    assert len(load_from_disk(str(tmp_path / "cls"))["train"]) == 30


def run_shapes_cli(*args):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "modeling_florence.shapes", *args], capture_output=True, text=True,
                          cwd=repo, env={**__import__("os").environ, "PYTHONPATH": str(repo)}, timeout=300)


def test_the_cli_runs_without_the_runpy_warning():
    result = run_shapes_cli("--help")
    assert result.returncode == 0 and "--num-train" in result.stdout
    assert "RuntimeWarning" not in result.stderr and "found in sys.modules" not in result.stderr, result.stderr


def test_the_cli_refuses_counts_out_of_range(tmp_path, capsys):
    result = run_shapes_cli("--task", "pairs", "--output", str(tmp_path / "out"), "--num-train", "-5")
    assert result.returncode == 2 and "argument --num-train: must be >= 1, got -5" in result.stderr
    assert not (tmp_path / "out").exists()
    for flag, value in [("--num-train", "0"), ("--num-test", "-1"), ("--image-size", "0"), ("--num-validation", "x")]:
        with pytest.raises(SystemExit) as exit_info:
            shapes.main(["--task", "pairs", "--output", str(tmp_path / "out"), flag, value])
        assert exit_info.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err


def test_the_package_still_exposes_the_builders_lazily():
    import modeling_florence as mf

    assert mf.build_detection is shapes.build_detection and "build_vqa" in dir(mf)


def test_florence2_rows_cover_every_task_and_their_targets_parse_to_the_drawn_objects():
    """Every task in turn; one object per colour and shape in a scene; `<OD>` targets parse (Transformers' parser)
    to the tight boxes within a bin, listed left to right; a shape's polygon covers its drawn mask."""
    from modeling_florence.processing_florence_generation import FlorenceGenerationProcessor

    data = shapes.build_florence2(num_train=28, num_validation=0, num_test=7, image_size=96, seed=1)
    assert data["train"]["task"] == list(shapes.FLORENCE2_TASKS) * 4
    assert data["test"]["image_id"][0] == shapes.SPLITS.index("test") * 10**7
    processor = FlorenceGenerationProcessor.from_defaults(image_size=96, image_seq_length=4)
    for row in data["train"]:
        task, target = row["task"], row["target"]
        if task == "<OD>":
            boxes = processor.post_process_generation(text=target, task=task, image_size=(96, 96))[task]["bboxes"]
            assert 1 <= len(boxes) <= 3 and [b[0] for b in boxes] == sorted(b[0] for b in boxes)
            assert all(0 <= v <= 96 and b[2] - b[0] > 8 for b in boxes for v in b)
        elif task in ("<CAPTION>", "<VQA>"):
            assert row["answers"] == [target]
        elif task == "<REGION_TO_CATEGORY>":
            assert target in shapes.SHAPES and row["prompt"].count("<loc_") == 4
        if task != "<VQA>":
            assert row["prompt"].startswith(task)
    for shape in shapes.SHAPES:  # the polygon of every shape covers its mask
        obj = shapes.ShapeObject(shape, "red", cx=48, cy=48, radius=30, angle=0.2)
        from PIL import Image, ImageDraw

        canvas = Image.new("1", (96, 96))
        ImageDraw.Draw(canvas).polygon(shapes.outline(obj), fill=1)
        polygon, mask = np.asarray(canvas), shapes.shape_mask(obj, 96)
        if shape == "ring":  # a ring's polygon is its outer boundary
            mask = mask | (np.hypot(*(shapes.pixel_centres(96) - 48)) <= 30)
        assert (polygon & mask).sum() / (polygon | mask).sum() > 0.85, shape
    with pytest.raises(ValueError, match="unknown: \\['<OCR>'\\]"):
        shapes.build_florence2(num_train=1, num_test=0, tasks=("<OD>", "<OCR>"))
