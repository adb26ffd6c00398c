"""Florence demo Space: zero-shot classification and image-text retrieval with a Florence model, on CPU.

    make app                                                   # the `make demo` model, http://127.0.0.1:7860
    FLORENCE_MODEL=path/or/repo-id python examples/space/app.py

Uploads are bounded: files over `FLORENCE_MAX_UPLOAD_MB` (default 10) are refused by the server, images over
`FLORENCE_MAX_PIXELS` (default 40 MP) and files that are not images get a clear message, and requests are queued
(`FLORENCE_CONCURRENCY` at a time). The examples and the retrieval gallery are generated Florence Shapes images.
"""

import os
import tempfile
from pathlib import Path

import gradio as gr
import torch
from transformers import AutoModel

import modeling_florence  # noqa: F401  (registers the Florence model types)
from modeling_florence import FlorenceProcessor, build_pairs
from modeling_florence.image_loading_florence import open_image

MODEL = os.environ.get("FLORENCE_MODEL", "outputs/florence-tiny-shapes")
MAX_UPLOAD_MB = float(os.environ.get("FLORENCE_MAX_UPLOAD_MB", "10"))
MAX_PIXELS = int(os.environ.get("FLORENCE_MAX_PIXELS", str(40_000_000)))
CONCURRENCY = int(os.environ.get("FLORENCE_CONCURRENCY", "2"))
MAX_LABELS = 50
GALLERY_SIZE = 24


class FlorenceDemo:
    """The model, its processor and a small Shapes gallery, loaded once."""

    def __init__(self, model: str = MODEL):
        self.model = AutoModel.from_pretrained(model).eval()
        self.processor = FlorenceProcessor.from_pretrained(model)
        image_size = self.processor.image_processor.crop_size["height"]
        pairs = build_pairs(num_train=0, num_validation=0, num_test=GALLERY_SIZE, image_size=max(image_size, 96))
        self.gallery = list(pairs["test"]["image"])
        self.gallery_captions = list(pairs["test"]["text"])
        with torch.no_grad():
            features = self.model.get_image_features(**self.processor(images=self.gallery)).pooler_output
        self.gallery_features = torch.nn.functional.normalize(features, dim=-1)
        self.example_dir = Path(tempfile.mkdtemp(prefix="florence-space-"))
        self.examples = []
        for index in (0, 5, 11):
            path = self.example_dir / f"shape-{index}.png"
            self.gallery[index].save(path)
            self.examples.append([str(path), "red circle, blue square, green star, yellow triangle, purple cross"])

    def load_image(self, path: str | None):
        if not path:
            raise gr.Error("Upload an image first.")
        try:
            return open_image(path, max_pixels=MAX_PIXELS)
        except (ValueError, OSError) as error:
            raise gr.Error(f"Could not read the upload as an image: {error}") from None

    def preview(self, path: str | None):
        try:
            return open_image(path, max_pixels=MAX_PIXELS).convert("RGB") if path else None
        except (ValueError, OSError):
            return None

    def classify(self, image_path: str | None, labels: str) -> dict[str, float]:
        """Zero-shot scores of the image against comma-separated labels ("a photo of a {label}.")."""
        names = [label.strip() for label in (labels or "").split(",") if label.strip()]
        if len(names) < 2:
            raise gr.Error("Give at least two comma-separated labels, e.g. 'red circle, blue square'.")
        if len(names) > MAX_LABELS or len(set(names)) != len(names):
            raise gr.Error(f"Give at most {MAX_LABELS} distinct labels.")
        image = self.load_image(image_path)
        inputs = self.processor(text=[f"a photo of a {name}." for name in names], images=[image], padding=True)
        with torch.no_grad():
            scores = self.model(**inputs).logits_per_image.softmax(dim=-1)[0]
        return {name: float(score) for name, score in zip(names, scores)}

    def retrieve(self, query: str, top_k: int = 6) -> list[tuple]:
        """The gallery images closest to a text query, with their similarity."""
        if not (query or "").strip():
            raise gr.Error("Type a description, e.g. 'a large red circle'.")
        with torch.no_grad():
            text = self.model.get_text_features(**self.processor(text=[query.strip()])).pooler_output
        similarity = (torch.nn.functional.normalize(text, dim=-1) @ self.gallery_features.t())[0]
        best = similarity.topk(min(top_k, len(self.gallery))).indices.tolist()
        return [(self.gallery[i], f"{similarity[i]:.3f} · {self.gallery_captions[i]}") for i in best]


def build_app(demo: FlorenceDemo) -> gr.Blocks:
    with gr.Blocks(title="Florence for Transformers") as app:
        gr.Markdown(f"# Florence for Transformers\nModel: `{MODEL}` (CoSwin + UniCL). Uploads up to "
                    f"{MAX_UPLOAD_MB:g} MB and {MAX_PIXELS / 1e6:g} MP.")
        with gr.Tab("Zero-shot classification"):
            with gr.Row():
                # A file input (not gr.Image), so every upload reaches our bounded loader and its clear messages.
                image = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="image")
                with gr.Column():
                    labels = gr.Textbox(label="Labels (comma-separated)", elem_id="labels")
                    button = gr.Button("Classify", variant="primary", elem_id="classify")
                    scores = gr.Label(num_top_classes=5, label="Scores", elem_id="scores")
                    preview = gr.Image(label="Preview", interactive=False, elem_id="preview", height=160)
            image.change(demo.preview, image, preview, show_progress="hidden")
            button.click(demo.classify, [image, labels], scores, api_name="classify", concurrency_limit=CONCURRENCY)
            gr.Examples(demo.examples, [image, labels])
        with gr.Tab("Image-text retrieval"):
            query = gr.Textbox(label="Describe an image", elem_id="query")
            search = gr.Button("Search the gallery", elem_id="search")
            results = gr.Gallery(label="Closest images", columns=6, elem_id="results")
            search.click(demo.retrieve, query, results, api_name="retrieve", concurrency_limit=CONCURRENCY)
    return app.queue(default_concurrency_limit=CONCURRENCY, max_size=64)


def main() -> None:
    app = build_app(FlorenceDemo())
    app.launch(
        server_name=os.environ.get("FLORENCE_HOST", "127.0.0.1"),
        server_port=int(os.environ.get("FLORENCE_PORT", "7860")),
        max_file_size=f"{MAX_UPLOAD_MB:g}mb",
        show_error=True,
    )


if __name__ == "__main__":
    main()
