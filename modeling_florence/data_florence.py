# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Loaders for real data formats, producing the same columns as the Florence Shapes sets (see `shapes.py`).

- `load_image_folder`: classification from `root/<class>/<image>` (`image`, `label`);
- `load_image_text_pairs`: pairs from jsonl, csv or webdataset tar shards (`image`, `text`, `is_label`), streamed
  for webdataset when asked;
- `load_coco_detection`: COCO json (`image`, `image_id`, `width`, `height`, `objects`);
- `load_vqav2`: VQAv2 questions + annotations json (`image`, `question`, `question_id`, `question_type`, `answers`,
  `answer`);
- `load_coco_generation`, `load_generation_jsonl`: Florence-2 rows (`image`, `image_id`, `width`, `height`, `task`,
  `prompt`, `target`, `answers`) from a COCO detection json (`<OD>` rows) or a jsonl of (image, prompt, answer);
- `load_video_folder`: a folder of videos with a csv of labels (`video` paths, or decoded `frames` as in Shapes,
  `label`, `caption`).

A row whose image cannot be fully decoded (truncated files included) or whose caption is missing, not a string or
not valid UTF-8 is skipped and counted (a warning reports how many, and why, at the end), or raises `ValueError`
naming the file with `strict=True`. A malformed table row (bad JSON, a line that is not an object, a csv row with the
wrong number of fields) raises `ValueError` naming the file and line; a missing column names it and the columns found.
"""

import csv
import io
import json
import re
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Image, IterableDataset, Sequence, Value
from PIL import Image as PILImage

from .processing_florence_generation import location_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
UNDECODED = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of bytes that are not UTF-8
PAIR_FEATURES = Features({"image": Image(), "text": Value("string"), "is_label": Value("bool")})


class SkipCounter:
    """Counts unusable rows by reason; raises at the first one in strict mode; warns with the totals at the end."""

    def __init__(self, source: str, strict: bool):
        self.source, self.strict, self.skipped, self.examples = source, strict, {}, []

    def skip(self, name: str, reason: str, error: Exception | None = None) -> bool:
        """Record an unusable row (always returns False, so `return counter.skip(...)` reads as "not usable")."""
        if self.strict:
            raise ValueError(f"{self.source}: {name}: {reason}{f' ({error})' if error else ''}") from error
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.examples.append(name)
        return False

    def readable(self, image_source, name: str) -> bool:
        """Whether the image decodes completely (`load`, not just `verify`: a truncated file fails here)."""
        try:
            with PILImage.open(image_source if not isinstance(image_source, bytes) else io.BytesIO(image_source)) as im:
                im.load()
            return True
        except Exception as error:  # noqa: BLE001 - any decoding failure makes the row unusable
            return self.skip(name, "unreadable image", error)

    def caption(self, text, name: str) -> str | None:
        """The caption if it is usable text (a non-empty str, or UTF-8 bytes), else None after counting the row."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as error:
                return self.skip(name, "caption not valid UTF-8", error) or None
        if isinstance(text, str) and UNDECODED.search(text):  # bytes a table could not decode (surrogateescape)
            return self.skip(name, "caption not valid UTF-8") or None
        if not isinstance(text, str) or not text.strip():
            return self.skip(name, f"no caption (null, empty or not a string: {text!r})") or None
        return text

    def report(self, kept: int) -> None:
        if self.skipped:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in self.skipped.items())
            warnings.warn(
                f"{self.source}: skipped {sum(self.skipped.values())} of {kept + sum(self.skipped.values())} rows "
                f"({reasons}; e.g. {', '.join(self.examples[:3])}); pass strict=True to fail instead",
                stacklevel=3,
            )


def require_columns(found, required, source: str) -> None:
    missing = [column for column in required if column not in found]
    if missing:
        raise ValueError(f"{source} has no column(s) {missing}; columns found: {sorted(found)}")


def load_image_folder(root: str | Path, strict: bool = False) -> Dataset:
    """Classification from `root/<class name>/<image>`; class names are the sorted folder names."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise ValueError(f"{root} must contain one sub-folder of images per class")
    counter = SkipCounter(str(root), strict)
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and counter.readable(path, str(path)):
                images.append(str(path))
                labels.append(label)
    counter.report(len(images))
    return Dataset.from_dict({"image": images, "label": labels},
                             features=Features({"image": Image(), "label": ClassLabel(names=classes)}))


def image_folder_pairs(root: str | Path, strict: bool = False) -> Dataset:
    """Image-label pairs from `root/<class name>/<image>`: the text is the class name (underscores as spaces),
    marked `is_label` so that prompt templates apply and all images of a class are UniCL positives."""
    folder = load_image_folder(root, strict)
    names = [name.replace("_", " ") for name in folder.features["label"].names]
    return Dataset.from_dict(
        {"image": folder.cast_column("image", Image(decode=False))["image"],
         "text": [names[label] for label in folder["label"]], "is_label": [True] * len(folder)},
        features=PAIR_FEATURES,
    )


def _table_rows(path: Path, source: str) -> list[tuple[int, dict]]:
    """`(line number, row)` of a jsonl or csv table. Bytes that are not UTF-8 are kept as surrogates (the caption
    check counts those rows); a malformed row raises `ValueError` naming the file and line."""
    rows = []
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        if source == "jsonl":
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: malformed JSON row ({error})") from error
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{number}: a row must be a JSON object, got {type(row).__name__}")
                rows.append((number, row))
            return rows
        reader = csv.DictReader(handle)
        for row in reader:
            if None in row or None in row.values():
                raise ValueError(f"{path}:{reader.line_num}: malformed row, not the {len(reader.fieldnames)} fields "
                                 f"the header names ({', '.join(reader.fieldnames)})")
            rows.append((reader.line_num, row))
    return rows


def load_image_text_pairs(
    source: str, path: str | Path, image_column: str = "image", text_column: str = "text",
    label_column: str | None = None, strict: bool = False, streaming: bool = False,
) -> Dataset | IterableDataset:
    """Image-text pairs from a jsonl/csv table (image paths relative to the table) or webdataset tar shards.

    `label_column` (optional) marks rows whose text is a short class label (prompt templates apply to those)."""
    if source == "webdataset":
        return _webdataset_pairs(path, strict, streaming)
    if source not in ("jsonl", "csv"):
        raise ValueError(f"source must be jsonl, csv or webdataset, got {source!r}")
    path = Path(path)
    rows = _table_rows(path, source)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    require_columns(rows[0][1].keys(), [image_column, text_column] + ([label_column] if label_column else []),
                    str(path))
    counter = SkipCounter(str(path), strict)
    columns = {"image": [], "text": [], "is_label": []}
    for number, row in rows:
        name = f"line {number}"
        text = counter.caption(row.get(text_column), name)
        if text is None:
            continue
        if not isinstance(row.get(image_column), str):
            counter.skip(name, f"no image path ({row.get(image_column)!r})")
            continue
        image = path.parent / row[image_column]
        if counter.readable(image, f"{name} ({image})"):
            columns["image"].append(str(image))
            columns["text"].append(text)
            columns["is_label"].append(_truthy(row[label_column]) if label_column else False)
    counter.report(len(columns["image"]))
    return Dataset.from_dict(columns, features=PAIR_FEATURES)


def _truthy(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


def _shard_paths(path: str | Path) -> list[Path]:
    path = Path(path)
    shards = sorted(path.glob("*.tar")) if path.is_dir() else sorted(path.parent.glob(path.name))
    if not shards:
        raise ValueError(f"No webdataset .tar shards found at {path}")
    return shards


def _webdataset_samples(shards: list[Path], counter: SkipCounter) -> Iterator[dict]:
    """Group tar members by key (name up to the first dot): one image plus a .txt or .json caption."""
    for shard in shards:
        samples: dict[str, dict] = {}
        with tarfile.open(shard) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                samples.setdefault(key, {})[extension.lower()] = archive.extractfile(member).read()
        for key, parts in samples.items():
            name = f"{shard.name}:{key}"
            image = next((parts[e] for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
            text = parts.get("txt")
            if text is None and "json" in parts:
                try:
                    meta = json.loads(parts["json"])
                except ValueError as error:
                    counter.skip(name, "malformed json", error)
                    continue
                text = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
            if image is None:
                counter.skip(name, "no image")
                continue
            text = counter.caption(text, name)
            if text is not None and counter.readable(image, name):
                yield {"image": {"bytes": image, "path": None}, "text": text.strip(), "is_label": False}


def _webdataset_pairs(path, strict: bool, streaming: bool):
    shards = _shard_paths(path)
    if streaming:
        def generate(shards):  # datasets may call this once per shard: each call reports its own skips
            counter, kept = SkipCounter(",".join(Path(s).name for s in shards), strict), 0
            for sample in _webdataset_samples([Path(s) for s in shards], counter):
                kept += 1
                yield sample
            counter.report(kept)

        return IterableDataset.from_generator(generate, features=PAIR_FEATURES,
                                              gen_kwargs={"shards": [str(s) for s in shards]})
    counter = SkipCounter(str(path), strict)
    rows = list(_webdataset_samples(shards, counter))
    counter.report(len(rows))
    return Dataset.from_list(rows, features=PAIR_FEATURES)


def load_coco_detection(annotations: str | Path, images_dir: str | Path, strict: bool = False) -> Dataset:
    """COCO detection json -> the Shapes detection columns; categories become a ClassLabel in id order."""
    annotations = Path(annotations)
    coco = json.loads(annotations.read_text())
    require_columns(coco.keys(), ["images", "annotations", "categories"], str(annotations))
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    category_index = {c["id"]: index for index, c in enumerate(categories)}
    by_image: dict[int, list] = {}
    for annotation in coco["annotations"]:
        require_columns(annotation.keys(), ["image_id", "bbox", "category_id"], f"{annotations} annotation")
        if annotation["category_id"] not in category_index:
            raise ValueError(
                f"{annotations}: annotation {annotation.get('id', '?')} (image {annotation['image_id']}) has "
                f"category_id {annotation['category_id']!r}, which is not one of the json's categories "
                f"{sorted(category_index)}"
            )
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    counter = SkipCounter(str(annotations), strict)
    rows = []
    for image in coco["images"]:
        require_columns(image.keys(), ["id", "file_name", "width", "height"], f"{annotations} image entry")
        path = Path(images_dir) / image["file_name"]
        if not counter.readable(path, str(path)):
            continue
        objects = by_image.get(image["id"], [])
        rows.append({
            "image": str(path), "image_id": image["id"], "width": image["width"], "height": image["height"],
            "objects": {"id": [a.get("id", i) for i, a in enumerate(objects)], "bbox": [a["bbox"] for a in objects],
                        "category": [category_index[a["category_id"]] for a in objects],
                        "area": [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in objects]},
        })
    counter.report(len(rows))
    features = Features({
        "image": Image(), "image_id": Value("int64"), "width": Value("int32"), "height": Value("int32"),
        "objects": Sequence({"id": Value("int64"), "bbox": Sequence(Value("float32"), length=4),
                             "category": ClassLabel(names=[c["name"] for c in categories]), "area": Value("float32")}),
    })
    return Dataset.from_list(rows, features=features)


GENERATION_FEATURES = Features({
    "image": Image(), "image_id": Value("int64"), "width": Value("int32"), "height": Value("int32"),
    "task": Value("string"), "prompt": Value("string"), "target": Value("string"), "answers": Sequence(Value("string")),
})
_TASK_PREFIX = re.compile(r"^\s*(<[A-Z][A-Z_]*>)")


def load_coco_generation(annotations: str | Path, images_dir: str | Path, strict: bool = False) -> Dataset:
    """A COCO detection json -> Florence-2 `<OD>` rows: the target is every object's category name and its box as
    `<loc_..>` tokens, objects left to right (as Florence Shapes writes them)."""
    detection = load_coco_detection(annotations, images_dir, strict=strict)
    category = detection.features["objects"]["category"]
    names = getattr(category, "feature", category).names  # a ClassLabel, inside a list feature on some releases
    rows = []
    for row in detection.cast_column("image", Image(decode=False)):
        size = (row["width"], row["height"])
        objects = sorted(zip(row["objects"]["bbox"], row["objects"]["category"]), key=lambda item: item[0][0])
        target = "".join(names[category] + location_text([x, y, x + w, y + h], size)
                         for (x, y, w, h), category in objects)
        rows.append({"image": row["image"]["path"], "image_id": row["image_id"], "width": row["width"],
                     "height": row["height"], "task": "<OD>", "prompt": "<OD>", "target": target, "answers": []})
    return Dataset.from_list(rows, features=GENERATION_FEATURES)


def load_generation_jsonl(path: str | Path, images_dir: str | Path | None = None, strict: bool = False) -> Dataset:
    """Lines of `{"image", "prompt", "answer"}` (optional `"answers"`: every reference answer) -> Florence-2 rows.
    The task is the prompt's task token (`<OD>`, `<CAPTION_TO_PHRASE_GROUNDING>a dog`, ...), `<VQA>` for a bare
    question; image paths are relative to `images_dir` (default: the file's folder)."""
    path = Path(path)
    rows = _table_rows(path, "jsonl")
    if not rows:
        raise ValueError(f"{path} holds no rows")
    counter, kept = SkipCounter(str(path), strict), []
    for number, row in rows:
        require_columns(row.keys(), ["image", "prompt", "answer"], f"{path}:{number}")
        name = f"line {number}"
        answer = counter.caption(row["answer"], name)
        image = Path(images_dir or path.parent) / str(row["image"])
        if answer is None or not counter.readable(image, f"{name} ({image})"):
            continue
        with PILImage.open(image) as opened:
            width, height = opened.size
        task = _TASK_PREFIX.match(str(row["prompt"]))
        kept.append({"image": str(image), "image_id": len(kept), "width": width, "height": height,
                     "task": task.group(1) if task else "<VQA>", "prompt": str(row["prompt"]), "target": answer,
                     "answers": [str(a) for a in row.get("answers") or [answer]]})
    counter.report(len(kept))
    return Dataset.from_list(kept, features=GENERATION_FEATURES)


def load_vqav2(
    questions: str | Path, annotations: str | Path, images_dir: str | Path,
    image_pattern: str = "COCO_{split}_{image_id:012d}.jpg", split: str = "val2014", strict: bool = False,
) -> Dataset:
    """VQAv2 questions + annotations json -> the Shapes VQA columns (10 annotator answers per question)."""
    question_file, annotation_file = Path(questions), Path(annotations)
    question_data, annotation_data = json.loads(question_file.read_text()), json.loads(annotation_file.read_text())
    require_columns(question_data.keys(), ["questions"], str(question_file))
    require_columns(annotation_data.keys(), ["annotations"], str(annotation_file))
    answers = {a["question_id"]: a for a in annotation_data["annotations"]}
    counter = SkipCounter(str(question_file), strict)
    rows = []
    for question in question_data["questions"]:
        require_columns(question.keys(), ["image_id", "question", "question_id"], f"{question_file} question")
        annotation = answers.get(question["question_id"])
        if annotation is None:
            raise ValueError(f"{annotation_file} has no annotation for question_id {question['question_id']}")
        path = Path(images_dir) / image_pattern.format(split=split, image_id=question["image_id"])
        if not counter.readable(path, str(path)):
            continue
        rows.append({
            "image": str(path), "question": question["question"], "question_id": question["question_id"],
            "question_type": annotation.get("question_type", ""),
            "answers": [a["answer"] for a in annotation["answers"]],
            "answer": annotation.get("multiple_choice_answer", ""),
        })
    counter.report(len(rows))
    features = Features({"image": Image(), "question": Value("string"), "question_id": Value("int64"),
                         "question_type": Value("string"), "answers": Sequence(Value("string")),
                         "answer": Value("string")})
    return Dataset.from_list(rows, features=features)


def load_video_folder(
    root: str | Path, labels_csv: str | Path, path_column: str = "path", label_column: str = "label",
    caption_column: str | None = "caption", decode: bool = False, num_frames: int = 8, strict: bool = False,
) -> Dataset:
    """Videos listed in a csv (path relative to `root`, label, optional caption).

    With `decode=False` the `video` column holds file paths (FlorenceVideoProcessor decodes them); with
    `decode=True` the clips are decoded now into `num_frames` uniformly sampled `frames`, as in Shapes video.
    Either way each video is checked through the processor's bounded decoder (`decode_video` with a sampler): frames
    are counted by demuxing, decoded only up to the last sampled one, and only the `num_frames` sampled frames become
    RGB, so a long video costs a few frames of memory, not all of them."""
    from .video_processing_florence import decode_video, uniform_indices

    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    rows = [row for _, row in _table_rows(Path(labels_csv), "csv")]
    if not rows:
        raise ValueError(f"{labels_csv} holds no rows")
    require_columns(rows[0].keys(), [path_column, label_column], str(labels_csv))
    has_caption = caption_column is not None and caption_column in rows[0]  # else the label is the caption
    names = sorted({row[label_column] for row in rows})
    columns = {"label": [], "caption": [], "frames" if decode else "video": []}
    counter = SkipCounter(str(labels_csv), strict)
    for row in rows:
        path = Path(root) / row[path_column]
        try:  # the processor's bounded path: demux to count, decode up to the last sampled frame, convert only those
            frames = decode_video(path, lambda total: uniform_indices(total, num_frames),
                                  min_side=None if decode else 1)  # validation only: sampled frames scaled to 2 px
        except (ValueError, FileNotFoundError) as error:
            counter.skip(str(path), "unreadable video", error)
            continue
        if decode:
            columns["frames"].append([PILImage.fromarray(frame) for frame in frames])
        else:
            columns["video"].append(str(path))
        columns["label"].append(names.index(row[label_column]))
        columns["caption"].append(row[caption_column] if has_caption else row[label_column])
    counter.report(len(columns["label"]))
    media = {"frames": Sequence(Image())} if decode else {"video": Value("string")}
    return Dataset.from_dict(columns, features=Features({**media, "label": ClassLabel(names=names),
                                                         "caption": Value("string")}))


__all__ = [
    "load_coco_detection",
    "load_image_folder",
    "load_image_text_pairs",
    "load_video_folder",
    "load_vqav2",
]
