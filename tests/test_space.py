"""The Gradio demo Space, tested as a person and as a client would: a real Chromium drives the page, 20 concurrent
API requests all get the right answer, and bad uploads get a clear message."""

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

from modeling_florence import FlorenceModel, FlorenceProcessor
from tests.test_common import tiny_florence_config

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LABELS = "red circle, blue square, green star"
UPLOAD_LIMIT_MB = 1


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
def app_url(model_folder):
    port = free_port()
    env = {**os.environ, "FLORENCE_MODEL": str(model_folder), "FLORENCE_PORT": str(port),
           "FLORENCE_MAX_UPLOAD_MB": str(UPLOAD_LIMIT_MB), "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen([sys.executable, str(REPO / "examples" / "space" / "app.py")], env=env,
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
        finally:
            browser.close()


def test_twenty_concurrent_requests_all_answer_correctly(app_url, image_path, expected_scores):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)

    def ask(_):
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
    too_big.write_bytes(os.urandom(2 * UPLOAD_LIMIT_MB * 1024 * 1024))
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        client.predict(handle_file(str(too_big)), LABELS, api_name="/classify")
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
