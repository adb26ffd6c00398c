"""Florence demo Space: zero-shot classification, image-text retrieval, open-vocabulary detection, VQA, video action
recognition and Florence-2 tasks (captions, detection, grounding, segmentation, regions) with Florence models, on CPU.

    make app                                                   # the `make demo*` models, http://127.0.0.1:7860
    FLORENCE_MODEL=path/or/repo-id python examples/space/app.py

Each tab has its own model, a folder or a Hub repo id from an environment variable (defaults: the `make demo*`
outputs); a tab whose model is missing shows how to create it instead of failing the app:

    FLORENCE_MODEL            outputs/florence-tiny-shapes                           make demo
    FLORENCE_DETECTION_MODEL  outputs/florence-detection-tiny-shapes-open-vocabulary make demo-detection
    FLORENCE_VQA_MODEL        outputs/florence-vqa-tiny-shapes                       make demo-vqa
    FLORENCE_VIDEO_MODEL      outputs/florence-video-tiny-shapes                     make demo-video
    FLORENCE_GENERATION_MODEL outputs/florence-generation-tiny-shapes                make demo-generation

Uploads are bounded: images up to `FLORENCE_MAX_UPLOAD_MB` (10) MB and `FLORENCE_MAX_PIXELS` (40 MP); videos up to
`FLORENCE_MAX_VIDEO_MB` (20) MB, `FLORENCE_MAX_VIDEO_FRAMES` (900: 30 s at 30 frames/s) frames and
`FLORENCE_MAX_VIDEO_PIXELS` (1920x1080) pixels a frame, read with the package's bounded loaders. Files over the larger
size limit are refused by the server; other bad uploads get a clear message. Requests are queued,
`FLORENCE_CONCURRENCY` (2) at a time per tab. The examples and the retrieval gallery are generated Florence Shapes.
"""

import os
import tempfile
from pathlib import Path

import av
import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.ops import clip_boxes_to_image
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

import modeling_florence as mf  # registers the Florence model types
from modeling_florence.evaluation_florence import zero_shot_classifier
from modeling_florence.evaluation_florence_video import VIDEO_TEMPLATES, encode_videos
from modeling_florence.image_loading_florence import decode_bounded, open_image, to_rgb_array
from modeling_florence.video_processing_florence import VIDEO_SUFFIXES

MAX_UPLOAD_MB = float(os.environ.get("FLORENCE_MAX_UPLOAD_MB", "10"))
MAX_PIXELS = int(os.environ.get("FLORENCE_MAX_PIXELS", str(40_000_000)))
MAX_VIDEO_MB = float(os.environ.get("FLORENCE_MAX_VIDEO_MB", "20"))
MAX_VIDEO_FRAMES = int(os.environ.get("FLORENCE_MAX_VIDEO_FRAMES", "900"))
MAX_VIDEO_PIXELS = int(os.environ.get("FLORENCE_MAX_VIDEO_PIXELS", str(1920 * 1080)))
CONCURRENCY = int(os.environ.get("FLORENCE_CONCURRENCY", "2"))
MAX_LABELS = 50
MAX_BOXES = 20
MAX_NEW_TOKENS = 128  # Florence-2 generation: at most this many tokens (fewer when the decoder is shorter), 3 beams
GALLERY_SIZE = 24
EXAMPLE_DIR = Path(tempfile.mkdtemp(prefix="florence-space-"))


# ----------------------------------------------------------------------------------------------------------------------
# Shared helpers: bounded uploads, label lists, generated examples
# ----------------------------------------------------------------------------------------------------------------------
def user_message(error: Exception) -> str:
    """A loader's message without its advice to programmers (`raise max_frames on the processor ...`)."""
    return str(error).split("; raise")[0]


def check_file_size(path: str, limit_mb: float, kind: str) -> None:
    size_mb = os.path.getsize(path) / 2**20
    if size_mb > limit_mb:
        raise gr.Error(f"The {kind} is {size_mb:.1f} MB, over this Space's limit of {limit_mb:g} MB.")


def load_image(path: str | None):
    """An uploaded image read by the package's loader (size-checked before decoding, upright by its EXIF orientation,
    16-bit scaled to 8-bit, transparency composited onto white), or a clear `gr.Error`."""
    if not path:
        raise gr.Error("Upload an image first.")
    check_file_size(path, MAX_UPLOAD_MB, "image")
    try:
        image = decode_bounded(open_image(path, max_pixels=MAX_PIXELS), max_pixels=MAX_PIXELS, name="The upload")
        return Image.fromarray(to_rgb_array(image))
    except (ValueError, OSError) as error:
        raise gr.Error(f"Could not read the upload as an image: {user_message(error)}") from None


def preview(path: str | None):
    try:
        return load_image(path) if path else None
    except gr.Error:
        return None


def parse_names(text: str | None, example: str, noun: str = "labels", minimum: int = 2) -> list[str]:
    """Distinct comma-separated names (e.g. labels), at least `minimum` (1 or 2) and at most MAX_LABELS."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    if len(names) < minimum:
        raise gr.Error(f"Give at least {('one', 'two')[minimum - 1]} comma-separated {noun}, e.g. '{example}'.")
    if len(names) > MAX_LABELS or len(set(names)) != len(names):
        raise gr.Error(f"Give at most {MAX_LABELS} distinct {noun}.")
    return names


def image_upload(elem_id: str, render: bool = True) -> gr.File:
    """A file input (not gr.Image), so every upload reaches the bounded loader and its clear messages."""
    return gr.File(label="Image", file_types=["image"], type="filepath", elem_id=elem_id, render=render)


def save_example(image, name: str) -> str:
    path = EXAMPLE_DIR / name
    image.save(path)
    return str(path)


def write_clip(frames, path: Path, rate: int = 8) -> str:
    """An mp4 (MPEG-4 part 2, so every FFmpeg build writes and reads it) of RGB PIL frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame.convert("RGB")), format="rgb24")))
        container.mux(stream.encode())
    return str(path)


class TaskDemo:
    """One tab's model: read from the folder or Hub repo id in `env` (default `default`, made by `make <target>`),
    loaded once by `load`. When it cannot be loaded, the tab shows `note` instead of its controls."""

    env = default = make_target = title = ""

    def __init__(self):
        self.source = os.environ.get(self.env, self.default)
        self.error = None
        if self.source == self.default and not Path(self.source).is_dir():
            self.error = "the folder does not exist"
        else:
            try:
                self.load(self.source)
            except Exception as error:  # noqa: BLE001 - any loading failure becomes the tab's note
                self.error = f"{type(error).__name__}: {error}"

    @property
    def ready(self) -> bool:
        return self.error is None

    @property
    def note(self) -> str:
        return (f"**No {self.title.lower()} model loaded** from `{self.source}` ({self.error}).\n\n"
                f"Create it with `make {self.make_target}`, or set `{self.env}` to a model folder or Hub repo id and "
                "restart the Space.")

    def load(self, source: str) -> None:
        raise NotImplementedError

    def controls(self) -> None:
        """The tab's inputs, outputs and events (only called when the model is loaded)."""
        raise NotImplementedError

    def scores_controls(self, upload: gr.File, text: gr.Textbox, handler, button: str, scores: gr.Label,
                        preview_id: str | None = None) -> None:
        """The layout of a tab that scores an upload and a text as label bars: the upload (with a preview of the image
        when `preview_id` is given), the text box, a button whose elem_id and API name are `handler`'s name, the
        scores, the examples. Components come unrendered (`render=False`) and are placed here."""
        with gr.Row():
            upload.render()
            with gr.Column():
                text.render()
                run = gr.Button(button, variant="primary", elem_id=handler.__name__)
                scores.render()
                if preview_id:
                    shown = gr.Image(label="Preview", interactive=False, elem_id=preview_id, height=160)
                    upload.change(preview, upload, shown, show_progress="hidden")
        run.click(handler, [upload, text], scores, api_name=handler.__name__, concurrency_limit=CONCURRENCY)
        gr.Examples(self.examples, [upload, text])

    def tab(self) -> None:
        with gr.Tab(self.title):
            if self.ready:
                gr.Markdown(f"Model: `{self.source}`", elem_classes="model-source")
                self.controls()
            else:
                gr.Markdown(self.note, elem_id=f"{self.make_target}-note")


# ----------------------------------------------------------------------------------------------------------------------
# Zero-shot classification and retrieval (FlorenceModel)
# ----------------------------------------------------------------------------------------------------------------------
class FlorenceDemo(TaskDemo):
    """The two-tower model, its processor and a small Shapes gallery: zero-shot classification and retrieval."""

    env, default = "FLORENCE_MODEL", "outputs/florence-tiny-shapes"
    make_target, title = "demo", "Zero-shot classification"

    def load(self, source: str) -> None:
        self.model = AutoModel.from_pretrained(source).eval()
        self.processor = mf.FlorenceProcessor.from_pretrained(source)
        image_size = self.processor.image_processor.crop_size["height"]
        pairs = mf.build_pairs(num_train=0, num_validation=0, num_test=GALLERY_SIZE, image_size=max(image_size, 96))
        self.gallery = list(pairs["test"]["image"])
        self.gallery_captions = list(pairs["test"]["text"])
        with torch.no_grad():
            features = self.model.get_image_features(**self.processor(images=self.gallery)).pooler_output
        self.gallery_features = torch.nn.functional.normalize(features, dim=-1)
        labels = "red circle, blue square, green star, yellow triangle, purple cross"
        self.examples = [[save_example(self.gallery[index], f"shape-{index}.png"), labels] for index in (0, 5, 11)]

    def classify(self, image_path: str | None, labels: str) -> dict[str, float]:
        """Zero-shot scores of the image against comma-separated labels ("a photo of a {label}.")."""
        names = parse_names(labels, "red circle, blue square")
        image = load_image(image_path)
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

    def controls(self) -> None:
        self.scores_controls(
            image_upload("image", render=False),
            gr.Textbox(label="Labels (comma-separated)", elem_id="labels", render=False),
            self.classify, "Classify", gr.Label(num_top_classes=5, label="Scores", elem_id="scores", render=False),
            preview_id="preview",
        )

    def tab(self) -> None:
        super().tab()
        if self.ready:
            with gr.Tab("Image-text retrieval"):
                query = gr.Textbox(label="Describe an image", elem_id="query")
                search = gr.Button("Search the gallery", elem_id="search")
                results = gr.Gallery(label="Closest images", columns=6, elem_id="results")
                search.click(self.retrieve, query, results, api_name="retrieve", concurrency_limit=CONCURRENCY)


# ----------------------------------------------------------------------------------------------------------------------
# Open-vocabulary detection (FlorenceForObjectDetection)
# ----------------------------------------------------------------------------------------------------------------------
class DetectionDemo(TaskDemo):
    """Boxes for comma-separated class names (open vocabulary), or the detector's own classes."""

    env, default = "FLORENCE_DETECTION_MODEL", "outputs/florence-detection-tiny-shapes-open-vocabulary"
    make_target, title = "demo-detection", "Detection"

    def load(self, source: str) -> None:
        self.model = mf.FlorenceForObjectDetection.from_pretrained(source).eval()
        self.processor = mf.FlorenceDetectionImageProcessor.from_pretrained(source)
        self.open_vocabulary = self.model.config.is_open_vocabulary
        self.tokenizer = mf.FlorenceDetectionTokenizer.from_pretrained(source) if self.open_vocabulary else None
        scenes = mf.build_detection(num_train=0, num_validation=0, num_test=3, image_size=128)["test"]
        self.examples = [
            [save_example(row["image"], f"detection-{index}.png"),
             ", ".join(dict.fromkeys(f"{colour} {mf.shapes.SHAPES[shape]}" for colour, shape in
                                     zip(row["objects"]["colour"], row["objects"]["category"])))]
            for index, row in enumerate(scenes)
        ]

    def detect(self, image_path: str | None, names: str, threshold: float = 0.2):
        """Boxes drawn on the image and the list of detections (label, score, xyxy box in pixels)."""
        image = load_image(image_path)
        class_inputs, labels = {}, self.model.config.id2label
        if self.open_vocabulary and (names or "").strip():
            wanted = parse_names(names, "red circle, blue star", "class names", minimum=1)
            class_inputs = dict(self.tokenizer(wanted, padding=True, return_tensors="pt"))
            labels = dict(enumerate(wanted))
        with torch.no_grad():
            outputs = self.model(**self.processor(images=image, return_tensors="pt"), **class_inputs)
        found = self.processor.post_process_object_detection(
            outputs, threshold=float(threshold), target_sizes=[(image.height, image.width)], top_k=MAX_BOXES)[0]
        boxes = clip_boxes_to_image(found["boxes"], (image.height, image.width))
        detections = [
            {"label": labels[int(label)], "score": round(float(score), 4), "box": [round(v, 1) for v in box.tolist()]}
            for score, label, box in zip(found["scores"], found["labels"], boxes)
        ]
        boxes = [(tuple(int(v) for v in d["box"]), f"{d['label']} {d['score']:.2f}") for d in detections]
        return (image, boxes), detections

    def controls(self) -> None:
        hint = ("Comma-separated class names (empty: the detector's own classes)" if self.open_vocabulary
                else "Class names (this detector is closed-set: it finds its own classes)")
        with gr.Row():
            image = image_upload("detection-image")
            with gr.Column():
                names = gr.Textbox(label=hint, elem_id="detection-names", interactive=self.open_vocabulary)
                threshold = gr.Slider(0.0, 1.0, value=0.2, step=0.05, label="Score threshold")
                button = gr.Button("Detect", variant="primary", elem_id="detect")
        boxes = gr.AnnotatedImage(label="Detections", elem_id="detections")
        table = gr.JSON(label="Boxes (x0, y0, x1, y1 in pixels)", elem_id="detection-list")
        button.click(self.detect, [image, names, threshold], [boxes, table], api_name="detect",
                     concurrency_limit=CONCURRENCY)
        gr.Examples(self.examples, [image, names])


# ----------------------------------------------------------------------------------------------------------------------
# Visual question answering (FlorenceForVQA)
# ----------------------------------------------------------------------------------------------------------------------
class VQADemo(TaskDemo):
    """The best answers to a question about an image, with their scores."""

    env, default, make_target, title = "FLORENCE_VQA_MODEL", "outputs/florence-vqa-tiny-shapes", "demo-vqa", "VQA"

    def load(self, source: str) -> None:
        self.model = mf.FlorenceForVQA.from_pretrained(source).eval()
        self.processor = mf.FlorenceVQAProcessor.from_pretrained(source)
        rows = mf.build_vqa(num_train=0, num_validation=0, num_test=3)["test"]
        self.examples = [[save_example(row["image"], f"vqa-{index}.png"), row["question"]]
                         for index, row in enumerate(rows)]

    def answer(self, image_path: str | None, question: str) -> dict[str, float]:
        if not (question or "").strip():
            raise gr.Error("Type a question, e.g. 'what colour is the circle?'.")
        image = load_image(image_path)
        with torch.no_grad():
            outputs = self.model(**self.processor(text=[question.strip()], images=[image], padding=True))
        best = self.processor.post_process_vqa(outputs, top_k=5)[0]
        return {item["answer"]: item["score"] for item in best}

    def controls(self) -> None:
        self.scores_controls(
            image_upload("vqa-image", render=False), gr.Textbox(label="Question", elem_id="question", render=False),
            self.answer, "Answer", gr.Label(num_top_classes=5, label="Answers", elem_id="answers", render=False),
            preview_id="vqa-preview",
        )


# ----------------------------------------------------------------------------------------------------------------------
# Video action recognition (FlorenceForVideoClassification, FlorenceVideoModel)
# ----------------------------------------------------------------------------------------------------------------------
class VideoDemo(TaskDemo):
    """Actions of a clip: the classifier's labels, or zero-shot over comma-separated action names with the video-text
    model (`FlorenceVideoModel`: the folder itself, or its `video-text` subfolder as `make demo-video` saves it)."""

    env, default = "FLORENCE_VIDEO_MODEL", "outputs/florence-video-tiny-shapes"
    make_target, title = "demo-video", "Video"

    def load(self, source: str) -> None:
        architecture = (AutoConfig.from_pretrained(source).architectures or [""])[0]
        self.classifier = self.video_text = None
        text_source = source
        if architecture == "FlorenceForVideoClassification":
            self.classifier = mf.FlorenceForVideoClassification.from_pretrained(source).eval()
            text_source = Path(source, "video-text")
        if architecture == "FlorenceVideoModel" or Path(text_source).is_dir():
            self.video_text = mf.FlorenceVideoModel.from_pretrained(text_source).eval()
        if self.classifier is None and self.video_text is None:
            raise ValueError(f"{source} holds a {architecture or 'non-Florence'} model, not a Florence video model")
        self.processor = mf.FlorenceProcessor.from_pretrained(source)
        self.processor.video_processor.max_frames = MAX_VIDEO_FRAMES
        self.processor.video_processor.max_image_pixels = MAX_VIDEO_PIXELS
        clips = mf.build_video(num_train=0, num_validation=0, num_test=3, num_frames=16)["test"]
        actions = ", ".join(mf.shapes.ACTIONS)
        self.examples = [[write_clip(row["frames"], EXAMPLE_DIR / f"clip-{index}.mp4"), actions]
                         for index, row in enumerate(clips)]

    def video_inputs(self, path: str | None) -> dict:
        if not path:
            raise gr.Error("Upload a video first.")
        check_file_size(path, MAX_VIDEO_MB, "video")
        try:
            return self.processor.video_processor(path)
        except (ValueError, OSError) as error:
            raise gr.Error(f"Could not read the upload as a video: {user_message(error)}") from None

    def recognise(self, video_path: str | None, actions: str) -> dict[str, float]:
        zero_shot = bool((actions or "").strip()) or self.classifier is None
        if zero_shot and self.video_text is None:
            raise gr.Error("This model is a classifier without a video-text model: leave the action names empty.")
        names = parse_names(actions, "moving left, growing", "action names") if zero_shot else None
        inputs = self.video_inputs(video_path)
        with torch.no_grad():
            if zero_shot:
                classes = zero_shot_classifier(self.video_text, self.processor, names, list(VIDEO_TEMPLATES))
                video = encode_videos(self.video_text, inputs["pixel_values_videos"])
                probabilities = (self.video_text.temperature() * video @ classes.t()).softmax(dim=-1)[0]
            else:
                names = [self.classifier.config.id2label[i] for i in range(self.classifier.config.num_labels)]
                probabilities = self.classifier(**inputs).logits.softmax(dim=-1)[0]
        return {name: float(p) for name, p in zip(names, probabilities)}

    def controls(self) -> None:
        hint = "Action names, comma-separated, for zero-shot" + (" (empty: the classifier's labels)"
                                                                  if self.classifier is not None else "")
        self.scores_controls(
            gr.File(label="Video", file_types=list(VIDEO_SUFFIXES), type="filepath", elem_id="video", render=False),
            gr.Textbox(label=hint, elem_id="actions", render=False), self.recognise, "Recognise",
            gr.Label(num_top_classes=5, label="Actions", elem_id="action-scores", render=False),
        )


# ----------------------------------------------------------------------------------------------------------------------
# Florence-2 tasks (FlorenceForConditionalGeneration)
# ----------------------------------------------------------------------------------------------------------------------
QUESTION = "question (VQA)"  # the task choice that sends the bare text as the prompt
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def result_shapes(result) -> list[tuple[str, list[float], str]]:
    """("box" or "polygon", flat pixel coordinates, label) of every box, OCR quad and polygon in a parsed result
    (`{"bboxes", "labels"}`, `{"quad_boxes", "labels"}`, `{"polygons", "labels"}`, or open-vocabulary detection's
    `{"bboxes", "bboxes_labels", "polygons", "polygons_labels"}`); none for a text result."""
    if not isinstance(result, dict):
        return []
    shapes = []
    for key, labels_key in (("bboxes", "bboxes_labels"), ("quad_boxes", "labels"), ("polygons", "polygons_labels")):
        labels = result.get(labels_key, result.get("labels", []))
        for index, item in enumerate(result.get(key, [])):
            label = labels[index] if index < len(labels) else ""
            parts = item if key == "polygons" else [item]  # an instance's polygons; one box or quad
            shapes.extend(("box" if key == "bboxes" else "polygon", list(part), label) for part in parts)
    return shapes


def draw_result(image: Image.Image, result) -> Image.Image:
    """A copy of the image with the result's boxes (rectangles) and polygons (outlines) drawn, each with its label."""
    annotated = image.copy()
    draw = ImageDraw.Draw(annotated)
    for index, (kind, points, label) in enumerate(result_shapes(result)):
        colour = COLOURS[index % len(COLOURS)]
        if kind == "box" and len(points) == 4:
            x0, y0, x1, y1 = points
            draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=colour, width=2)
        elif len(points) >= 6:
            draw.polygon(list(zip(points[0::2], points[1::2])), outline=colour, width=2)
        else:
            continue
        if label:
            draw.text((min(points[0::2]) + 2, min(points[1::2]) + 1), str(label), fill=colour)
    return annotated


def parse_region(text: str | None, size: tuple[int, int]) -> list[float]:
    """A region typed as "x0,y0,x1,y1" pixels inside an image of `size` (width, height), or a clear `gr.Error`."""
    width, height = size
    try:
        box = [float(value) for value in (text or "").split(",")]
    except ValueError:
        box = []
    if len(box) != 4 or not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
        raise gr.Error(f"Give the region as x0,y0,x1,y1 pixels inside the {width}x{height} image, "
                       f"e.g. '0,0,{width // 2},{height // 2}'.")
    return box


class GenerationDemo(TaskDemo):
    """Florence-2 tasks: a task token (or a free question), optional text, generated text parsed into boxes,
    polygons or text, drawn on the image."""

    env, default = "FLORENCE_GENERATION_MODEL", "outputs/florence-generation-tiny-shapes"
    make_target, title = "demo-generation", "Florence-2 tasks"

    def load(self, source: str) -> None:
        self.model = AutoModelForImageTextToText.from_pretrained(source).eval()
        self.processor = AutoProcessor.from_pretrained(source)
        self.max_new_tokens = min(MAX_NEW_TOKENS, self.model.max_decoder_length())
        scenes = mf.build_detection(num_train=0, num_validation=0, num_test=3, image_size=128)["test"]
        x, y, w, h = scenes[2]["objects"]["bbox"][0]
        self.examples = [
            [save_example(scenes[0]["image"], "generation-0.png"), "<OD>", ""],
            [save_example(scenes[1]["image"], "generation-1.png"), "<CAPTION_TO_PHRASE_GROUNDING>",
             f"a {scenes[1]['objects']['colour'][0]} {mf.shapes.SHAPES[scenes[1]['objects']['category'][0]]}"],
            [save_example(scenes[2]["image"], "generation-2.png"), "<REGION_TO_CATEGORY>",
             f"{x:.0f},{y:.0f},{x + w:.0f},{y + h:.0f}"],
        ]

    def prompt(self, task: str, text: str | None, size: tuple[int, int]) -> str:
        """The prompt of a task and its text: the bare question, a region's location tokens, or task + text."""
        text = (text or "").strip()
        if task == QUESTION:
            if not text:
                raise gr.Error("Type a question, e.g. 'what colour is the circle?'.")
            return text
        if task.startswith("<REGION_TO_"):
            return self.processor.region_prompt(task, parse_region(text, size), size)
        return task + text

    def run_task(self, image_path: str | None, task: str, text: str | None):
        """The image with the result's boxes and polygons drawn, and the parsed result (`{task: result}`)."""
        image = load_image(image_path)
        try:
            inputs = self.processor(images=image, text=self.prompt(task, text, image.size))
        except gr.Error:
            raise
        except ValueError as error:  # the processor's: unknown task, missing or refused text
            raise gr.Error(str(error)) from None
        length, limit = inputs["input_ids"].shape[1], self.model.max_decoder_length()
        if length > limit:  # the text encoder's position table
            raise gr.Error(f"The prompt is {length} tokens with the image's, over this model's {limit}: "
                           "shorten the text.")
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=3)[0]
        if task == QUESTION:
            return image, {QUESTION: self.processor.batch_decode([ids], skip_special_tokens=True)[0].strip()}
        result = self.processor.post_process_generation(sequence=ids, task=task, image_size=image.size)
        return draw_result(image, result[task]), result

    def controls(self) -> None:
        with gr.Row():
            image = image_upload("generation-image")
            with gr.Column():
                task = gr.Dropdown(self.processor.tasks + [QUESTION], value="<OD>", label="Task",
                                   elem_id="generation-task")
                text = gr.Textbox(label="Text (a caption or expression, a question, or a region as x0,y0,x1,y1 "
                                  "pixels; empty for tasks without text)", elem_id="generation-text")
                button = gr.Button("Run", variant="primary", elem_id="run_task")
        with gr.Row():
            annotated = gr.Image(label="Result", type="pil", interactive=False, elem_id="generation-annotated")
            parsed = gr.JSON(label="Parsed result (pixels)", elem_id="generation-result")
        button.click(self.run_task, [image, task, text], [annotated, parsed], api_name="run_task",
                     concurrency_limit=CONCURRENCY)
        gr.Examples(self.examples, [image, task, text])


DEMOS = (FlorenceDemo, DetectionDemo, VQADemo, VideoDemo, GenerationDemo)


def build_app(demos: list[TaskDemo]) -> gr.Blocks:
    with gr.Blocks(title="Florence for Transformers") as app:
        gr.Markdown(f"# Florence for Transformers\nCoSwin + UniCL on CPU. Images up to {MAX_UPLOAD_MB:g} MB and "
                    f"{MAX_PIXELS / 1e6:g} MP; videos up to {MAX_VIDEO_MB:g} MB, {MAX_VIDEO_FRAMES} frames and "
                    f"{MAX_VIDEO_PIXELS / 1e6:g} MP a frame.")
        for demo in demos:
            demo.tab()
    return app.queue(default_concurrency_limit=CONCURRENCY, max_size=64)


def main() -> None:
    app = build_app([demo() for demo in DEMOS])
    app.launch(
        server_name=os.environ.get("FLORENCE_HOST", "127.0.0.1"),
        server_port=int(os.environ.get("FLORENCE_PORT", "7860")),
        max_file_size=f"{max(MAX_UPLOAD_MB, MAX_VIDEO_MB):g}mb",
        show_error=True,
    )


if __name__ == "__main__":
    main()
