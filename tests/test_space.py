"""The Gradio demo Space, tested as a person and as a client would: a real Chromium drives the page (classification,
then the detection and Florence-2 tabs), 20 concurrent API requests all get the right answer, the detection, VQA, video
and Florence-2 endpoints answer in their formats on tiny random-weight models, bad uploads get a clear message, and a
tab whose model folder is missing says how to make it."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import modeling_florence as mf
from modeling_florence import FlorenceModel, FlorenceProcessor
from tests.conftest import write_video
from tests.test_common import (
    GENERATION_TEXT,
    tiny_detection_config,
    tiny_florence_config,
    tiny_text_config,
    tiny_video_classification_config,
    tiny_video_config,
    tiny_vision_config,
    tiny_vqa_config,
)

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "examples" / "space" / "app.py"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LABELS = "red circle, blue square, green star"
IMAGE_LIMIT_MB, VIDEO_LIMIT_MB = 0.5, 1  # the server refuses files over the larger one
MAX_VIDEO_FRAMES = 24
DETECTION_CLASSES = ["red circle", "blue star", "green cross"]
ANSWERS = ["yes", "no", "red", "2", "circle"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("space-model")
    torch.manual_seed(0)
    FlorenceModel(tiny_florence_config()).save_pretrained(folder)
    FlorenceProcessor.from_defaults(image_size=48).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def task_folders(tmp_path_factory):
    """Tiny random-weight detection (open vocabulary), VQA, video (classifier + video-text) and Florence-2 (CoSwin +
    BART on the shipped tokenizer) folders, saved with their processors as the `make demo-*` targets save them."""
    root = tmp_path_factory.mktemp("space-tasks")
    torch.manual_seed(0)
    detector = mf.FlorenceForObjectDetection(
        tiny_detection_config(text_config=tiny_text_config().to_dict(), projection_dim=24)).eval()
    tokenizer = mf.FlorenceDetectionTokenizer.from_defaults()
    detector.set_class_names(DETECTION_CLASSES, tokenizer)
    detector.save_pretrained(root / "detection")
    mf.FlorenceDetectionImageProcessor.from_detection_config(
        detector.config, size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(root / "detection")
    tokenizer.save_pretrained(root / "detection")

    mf.FlorenceForVQA(tiny_vqa_config(id2label=dict(enumerate(ANSWERS)))).save_pretrained(root / "vqa")
    mf.FlorenceVQAProcessor.from_defaults(image_size=32, answer_vocabulary=ANSWERS).save_pretrained(root / "vqa")

    processor = FlorenceProcessor.from_defaults(image_size=32, num_frames=4)
    mf.FlorenceForVideoClassification(tiny_video_classification_config()).save_pretrained(root / "video")
    processor.save_pretrained(root / "video")
    mf.FlorenceVideoModel(tiny_video_config()).save_pretrained(root / "video" / "video-text")
    processor.save_pretrained(root / "video" / "video-text")
    save_generation_model(root / "generation")
    return {"FLORENCE_DETECTION_MODEL": root / "detection", "FLORENCE_VQA_MODEL": root / "vqa",
            "FLORENCE_VIDEO_MODEL": root / "video", "FLORENCE_GENERATION_MODEL": root / "generation"}


def save_generation_model(folder: Path) -> None:
    """A CoSwin + BART `FlorenceForConditionalGeneration` on the shipped tokenizer, with its processor (32 px; a
    32-position decoder, so a request writes at most 32 tokens)."""
    tokenizer = mf.FlorenceGenerationTokenizer.from_defaults()
    text = dict(GENERATION_TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                decoder_start_token_id=tokenizer.eos_token_id, max_position_embeddings=32, use_cache=True)
    config = mf.FlorenceGenerationConfig(
        vision_tower="coswin", vision_config=tiny_vision_config(window_size=2).to_dict(), text_config=text,
        image_token_id=tokenizer.image_token_id)
    model = mf.FlorenceForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    mf.FlorenceGenerationProcessor.from_defaults(image_size=32, image_seq_length=model.num_image_tokens(32, 32)
                                                 ).save_pretrained(folder)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "upload.png"
    pixels = np.zeros((60, 80, 3), np.uint8)
    pixels[10:50, 20:60] = (220, 30, 30)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def expected_scores(model_folder, image_path):
    """What the package itself answers for the upload: the app must show exactly this."""
    model = FlorenceModel.from_pretrained(model_folder).eval()
    processor = FlorenceProcessor.from_pretrained(model_folder)
    names = [name.strip() for name in LABELS.split(",")]
    inputs = processor(text=[f"a photo of a {n}." for n in names], images=[Image.open(image_path)], padding=True)
    with torch.no_grad():
        scores = model(**inputs).logits_per_image.softmax(dim=-1)[0]
    return dict(zip(names, scores.tolist()))


@pytest.fixture(scope="module")
def app_url(model_folder, task_folders):
    port = free_port()
    env = {**os.environ, "FLORENCE_MODEL": str(model_folder), "FLORENCE_PORT": str(port),
           "FLORENCE_MAX_UPLOAD_MB": str(IMAGE_LIMIT_MB), "FLORENCE_MAX_VIDEO_MB": str(VIDEO_LIMIT_MB),
           "FLORENCE_MAX_VIDEO_FRAMES": str(MAX_VIDEO_FRAMES), "GRADIO_ANALYTICS_ENABLED": "False",
           **{name: str(folder) for name, folder in task_folders.items()}}
    process = subprocess.Popen([sys.executable, str(APP)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the app exited:\n{process.stdout.read()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError("the app did not start within 300 s") from None
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_person_classifies_an_upload_in_chromium(app_url, image_path, expected_scores):
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium is missing at {CHROMIUM}; .ci/run installs Debian's chromium package")
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(app_url, wait_until="networkidle")
            page.set_input_files("#image input[type=file]", str(image_path))
            page.fill("#labels textarea", LABELS)
            page.click("#classify")
            page.wait_for_selector("#scores .output-class", timeout=120_000)
            shown_first = page.inner_text("#scores .output-class").strip()
            assert shown_first == max(expected_scores, key=expected_scores.get)
            page.wait_for_selector("#preview img", timeout=30_000)
            assert "Error" not in page.inner_text("body")
            (REPO / "outputs").mkdir(exist_ok=True)
            page.screenshot(path=str(REPO / "outputs" / "space-screenshot.png"), full_page=True)

            page.get_by_role("tab", name="Detection").click()
            page.set_input_files("#detection-image input[type=file]", str(image_path))
            page.fill("#detection-names textarea", ", ".join(DETECTION_CLASSES))
            page.click("#detect")
            page.wait_for_selector("#detections img", timeout=120_000)
            assert "Error" not in page.inner_text("body")

            page.get_by_role("tab", name="Florence-2 tasks").click()
            page.set_input_files("#generation-image input[type=file]", str(image_path))
            page.click("#run_task")  # the default task, <OD>
            page.wait_for_selector("#generation-annotated img", timeout=120_000)
            assert "<OD>" in page.inner_text("#generation-result")
            assert "Error" not in page.inner_text("body")
        finally:
            browser.close()


def test_twenty_concurrent_requests_all_answer_correctly(app_url, image_path, expected_scores):
    from gradio_client import Client, handle_file

    # One client per request: a gradio_client `Client` shared by 20 threads races on its event stream (a finished job's
    # message can arrive after its thread is marked complete: CancelledError, seen once in a full-suite run); the server
    # still gets the 20 requests at once.
    def ask(_):
        client = Client(app_url, verbose=False)
        return client.predict(handle_file(str(image_path)), LABELS, api_name="/classify")

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(ask, range(20)))
    assert len(answers) == 20
    for answer in answers:
        scores = {item["label"]: item["confidence"] for item in answer["confidences"]}
        assert scores.keys() == expected_scores.keys()
        np.testing.assert_allclose([scores[k] for k in expected_scores], list(expected_scores.values()), atol=1e-5)
        assert answer["label"] == max(expected_scores, key=expected_scores.get)


def test_bad_uploads_get_a_clear_message(app_url, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    too_big = tmp_path / "big.png"
    too_big.write_bytes(os.urandom(2 * VIDEO_LIMIT_MB * 1024 * 1024))
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        client.predict(handle_file(str(too_big)), LABELS, api_name="/classify")
    over_image_limit = tmp_path / "large.png"
    over_image_limit.write_bytes(os.urandom(int(0.8 * 1024 * 1024)))
    with pytest.raises(Exception, match="over this Space's limit of 0.5 MB"):
        client.predict(handle_file(str(over_image_limit)), LABELS, api_name="/classify")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    with pytest.raises(Exception, match="Invalid file type"):
        client.predict(handle_file(str(text_file)), LABELS, api_name="/classify")
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(512))
    with pytest.raises(Exception, match="Could not read the upload as an image"):
        client.predict(handle_file(str(fake_png)), LABELS, api_name="/classify")
    with pytest.raises(Exception, match="at least two comma-separated labels"):
        client.predict(handle_file(str(fake_png)), "only one", api_name="/classify")


def test_retrieval_returns_gallery_images(app_url):
    from gradio_client import Client

    results = Client(app_url, verbose=False).predict("a large red circle", api_name="/retrieve")
    assert len(results) == 6 and all(Path(item["image"]).is_file() and item["caption"] for item in results)


# ----------------------------------------------------------------------------------------------------------------------
# Detection, VQA and video tabs
# ----------------------------------------------------------------------------------------------------------------------
def test_detection_returns_boxes_drawn_and_listed(app_url, image_path):
    from gradio_client import Client, handle_file

    names = ["red circle", "blue star"]
    annotated, detections = Client(app_url, verbose=False).predict(
        handle_file(str(image_path)), ", ".join(names), 0.0, api_name="/detect")
    assert Path(annotated["image"]).is_file()
    assert 1 <= len(detections) <= 20 and len(annotated["annotations"]) == len(detections)
    width, height = Image.open(image_path).size
    for found in detections:
        assert found["label"] in names and 0.0 <= found["score"] <= 1.0
        x0, y0, x1, y1 = found["box"]
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
    assert [found["score"] for found in detections] == sorted((f["score"] for f in detections), reverse=True)
    # no names: the detector's stored classes
    _, stored = Client(app_url, verbose=False).predict(handle_file(str(image_path)), "", 0.0, api_name="/detect")
    assert stored and {found["label"] for found in stored} <= set(DETECTION_CLASSES)


def test_vqa_answers_with_scores(app_url, image_path, task_folders):
    from gradio_client import Client, handle_file

    question = "what colour is the square?"
    answer = Client(app_url, verbose=False).predict(handle_file(str(image_path)), question, api_name="/answer")
    scores = {item["label"]: item["confidence"] for item in answer["confidences"]}
    assert len(scores) == 5 and set(scores) <= set(ANSWERS) and all(0 < s < 1 for s in scores.values())
    model = mf.FlorenceForVQA.from_pretrained(task_folders["FLORENCE_VQA_MODEL"]).eval()
    processor = mf.FlorenceVQAProcessor.from_pretrained(task_folders["FLORENCE_VQA_MODEL"])
    with torch.no_grad():
        outputs = model(**processor(text=[question], images=[Image.open(image_path)]))
    expected = processor.post_process_vqa(outputs)[0][0]
    assert answer["label"] == expected["answer"]
    assert scores[expected["answer"]] == pytest.approx(expected["score"], abs=1e-5)


def test_video_actions_from_the_classifier_and_zero_shot(app_url, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=12)
    labels = client.predict(handle_file(str(clip)), "", api_name="/recognise")
    scores = {item["label"]: item["confidence"] for item in labels["confidences"]}
    assert set(scores) == {"left", "right", "still"} and sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
    actions = ["moving left", "growing", "rotating"]
    zero_shot = client.predict(handle_file(str(clip)), ", ".join(actions), api_name="/recognise")
    scores = {item["label"]: item["confidence"] for item in zero_shot["confidences"]}
    assert set(scores) == set(actions) and sum(scores.values()) == pytest.approx(1.0, abs=1e-4)


def test_task_tabs_refuse_bad_uploads_clearly(app_url, image_path, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    for arguments, endpoint in (((LABELS, 0.3), "/detect"), (("what shape?",), "/answer"), (("",), "/recognise")):
        with pytest.raises(Exception, match="Invalid file type"):
            client.predict(handle_file(str(notes)), *arguments, api_name=endpoint)
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(512))
    with pytest.raises(Exception, match="Could not read the upload as an image"):
        client.predict(handle_file(str(fake_png)), LABELS, 0.3, api_name="/detect")
    large = tmp_path / "large.png"
    large.write_bytes(os.urandom(int(0.8 * 1024 * 1024)))
    with pytest.raises(Exception, match="over this Space's limit of 0.5 MB"):
        client.predict(handle_file(str(large)), "what shape?", api_name="/answer")
    with pytest.raises(Exception, match="Type a question"):
        client.predict(handle_file(str(image_path)), "  ", api_name="/answer")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(os.urandom(4096))
    with pytest.raises(Exception, match="Could not read the upload as a video"):
        client.predict(handle_file(str(broken)), "", api_name="/recognise")
    long_clip = tmp_path / "long.mp4"
    write_video(long_clip, frames=MAX_VIDEO_FRAMES + 6)
    with pytest.raises(Exception, match=f"over max_frames={MAX_VIDEO_FRAMES}"):
        client.predict(handle_file(str(long_clip)), "", api_name="/recognise")
    with pytest.raises(Exception, match="at least two comma-separated action names"):
        client.predict(handle_file(str(long_clip)), "only one", api_name="/recognise")


def test_florence2_tasks_draw_and_parse_results(app_url, image_path, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    width, height = Image.open(image_path).size
    for task, text in (("<OD>", ""), ("<CAPTION_TO_PHRASE_GROUNDING>", "a red square")):
        annotated, result = client.predict(handle_file(str(image_path)), task, text, api_name="/run_task")
        assert Image.open(annotated).size == (width, height)
        assert set(result) == {task} and set(result[task]) == {"bboxes", "labels"}
        assert len(result[task]["bboxes"]) == len(result[task]["labels"])
        assert all(0 <= x <= width and 0 <= y <= height for x0, y0, x1, y1 in result[task]["bboxes"]
                   for x, y in ((x0, y0), (x1, y1)))
    _, region = client.predict(handle_file(str(image_path)), "<REGION_TO_CATEGORY>", "20,10,60,50",
                               api_name="/run_task")
    assert isinstance(region["<REGION_TO_CATEGORY>"], str)
    _, answer = client.predict(handle_file(str(image_path)), "question (VQA)", "what colour?", api_name="/run_task")
    assert isinstance(answer["question (VQA)"], str)
    with pytest.raises(Exception, match="<CAPTION_TO_PHRASE_GROUNDING> needs text input"):
        client.predict(handle_file(str(image_path)), "<CAPTION_TO_PHRASE_GROUNDING>", " ", api_name="/run_task")
    with pytest.raises(Exception, match="takes no text input"):
        client.predict(handle_file(str(image_path)), "<OD>", "cats", api_name="/run_task")
    with pytest.raises(Exception, match="Give the region as x0,y0,x1,y1 pixels inside the 80x60 image"):
        client.predict(handle_file(str(image_path)), "<REGION_TO_CATEGORY>", "20,10,90", api_name="/run_task")
    with pytest.raises(Exception, match="Type a question"):
        client.predict(handle_file(str(image_path)), "question (VQA)", "", api_name="/run_task")
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(512))
    with pytest.raises(Exception, match="Could not read the upload as an image"):
        client.predict(handle_file(str(fake_png)), "<OD>", "", api_name="/run_task")


def test_florence2_results_are_drawn_as_boxes_and_polygons():
    app = load_space_app()
    image = Image.new("RGB", (80, 60), "white")
    boxes = app.draw_result(image, {"bboxes": [[10.0, 10.0, 40.0, 30.0]], "labels": ["circle"]})
    polygons = app.draw_result(image, {"polygons": [[[50.0, 5.0, 75.0, 5.0, 75.0, 40.0]]], "labels": ["star"]})
    text = app.draw_result(image, "a red circle")
    assert np.asarray(boxes)[10, 25].tolist() != [255, 255, 255]  # the rectangle's top edge
    assert np.asarray(polygons)[5, 60].tolist() != [255, 255, 255]  # the polygon's top edge
    assert np.asarray(boxes)[20, 60].tolist() == [255, 255, 255] and np.asarray(text).min() == 255
    assert np.asarray(image).min() == 255  # the upload itself is not drawn on
    shapes = app.result_shapes({"bboxes": [[1, 2, 3, 4]], "bboxes_labels": ["a"],
                                "polygons": [[[0, 0, 5, 0, 5, 5]]], "polygons_labels": ["b"]})
    assert shapes == [("box", [1, 2, 3, 4], "a"), ("polygon", [0, 0, 5, 0, 5, 5], "b")]


def load_space_app():
    """The Space's `app.py`, imported by path (the Space is an app folder, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "space" / "app.py"
    spec = importlib.util.spec_from_file_location("app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_missing_model_folder_gives_a_note_not_a_crash(monkeypatch, tmp_path):
    app = load_space_app()
    for demo in (app.DetectionDemo, app.VQADemo, app.VideoDemo, app.GenerationDemo):
        monkeypatch.delenv(demo.env, raising=False)
        monkeypatch.chdir(tmp_path)  # no outputs/ here: the default folders are missing
        loaded = demo()
        assert not loaded.ready and f"make {demo.make_target}" in loaded.note and demo.env in loaded.note
    monkeypatch.setenv("FLORENCE_VQA_MODEL", str(tmp_path / "nowhere"))
    assert "nowhere" in app.VQADemo().note
    blocks = app.build_app([app.DetectionDemo(), app.VQADemo(), app.VideoDemo(), app.GenerationDemo()])
    assert "make demo-detection" in str(blocks.config) and "make demo-generation" in str(blocks.config)


def test_the_space_reads_uploads_with_the_package_loader(tmp_path):
    """EXIF orientation, 16-bit PNG and transparency go through `image_loading_florence`, not `convert("RGB")`."""
    app = load_space_app()
    tall = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = tall.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    tall.save(tmp_path / "phone.jpg", exif=exif)
    assert app.load_image(str(tmp_path / "phone.jpg")).size == (20, 40)
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "deep.png")
    assert abs(int(np.asarray(app.load_image(str(tmp_path / "deep.png")))[0, 0, 0]) - 128) <= 1
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert np.asarray(app.load_image(str(tmp_path / "clear.png"))).min() == 255  # white, not black
