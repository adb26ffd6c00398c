"""Write a saved Florence model folder as a Hub repository that loads with `trust_remote_code=True`.

The output is exactly what gets uploaded: safetensors weights, `config.json` with an `auto_map` entry for every Auto
class the model serves, the flat `modeling_florence` modules the model and its processor import (and nothing else),
the processing files of the model's task with their own `auto_map` (a detector: its detection image processor and,
open-vocabulary, its tokenizer; a video classifier: its video processor; otherwise the saved processor, e.g.
`FlorenceVQAProcessor`), and the model card. A machine without this package then
loads it with `AutoModel.from_pretrained(repo, trust_remote_code=True)`, `AutoProcessor` and the task's pipeline.

    python conversion/export_for_hub.py --model outputs/florence-tiny-shapes --output hub/florence-tiny-shapes
    python conversion/export_for_hub.py --model ... --output ... --push-to-hub you/florence-tiny-shapes [--dry-run]
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import transformers
from transformers import PreTrainedTokenizerBase, ProcessorMixin
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.video_processing_utils import BaseVideoProcessor

import modeling_florence  # noqa: F401  (registers the Florence classes with the Auto classes)
from modeling_florence import (
    FlorenceDetectionConfig,
    FlorenceDetectionImageProcessor,
    FlorenceDetectionTokenizer,
    FlorenceForImageClassification,
    FlorenceForVideoClassification,
    FlorenceImageProcessor,
    FlorenceProcessor,
    FlorenceVideoProcessor,
    FlorenceVideoVisionModel,
    FlorenceVisionBackbone,
    FlorenceVisionModel,
)
from modeling_florence.model_card import load_results, write_model_card

# Auto classes a Florence model can be served through; the export lists those whose mapping holds its config class.
MODEL_AUTO_CLASSES = (
    "AutoModel",
    "AutoBackbone",
    "AutoModelForZeroShotImageClassification",
    "AutoModelForImageClassification",
    "AutoModelForObjectDetection",
    "AutoModelForZeroShotObjectDetection",
    "AutoModelForVisualQuestionAnswering",
    "AutoModelForVideoClassification",
    "AutoModelForPreTraining",
    "AutoModelForImageTextToText",
)
# Models whose inputs are pixels only: a folder of theirs may hold just its image (or video) processor, no tokenizer.
IMAGE_ONLY_MODELS = (FlorenceForImageClassification, FlorenceVisionModel, FlorenceVisionBackbone)
VIDEO_ONLY_MODELS = (FlorenceForVideoClassification, FlorenceVideoVisionModel)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
PROCESSOR_FILES = ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "preprocessor_config.json", "video_preprocessor_config.json", "chat_template.jinja")


def reference(cls: type) -> str:
    """`module.Class` as `auto_map` names a class of a module file in the repository."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def model_auto_map(model_class: type, config_class: type) -> dict:
    auto_map = {"AutoConfig": reference(config_class)}
    for name in MODEL_AUTO_CLASSES:
        mapping = getattr(transformers, name)._model_mapping
        served = mapping._extra_content.get(config_class)
        if served is not None:
            auto_map[name] = reference(served)
    if model_class.__name__ not in {entry.rsplit(".", 1)[-1] for entry in auto_map.values()}:
        raise ValueError(f"{model_class.__name__} is not registered with any Auto class; cannot export it")
    return auto_map


def module_files(*classes: type) -> list[Path]:
    """The module files defining `classes` and every module they import relatively (`from .x import y`)."""
    files = set()
    for cls in classes:
        source = Path(sys.modules[cls.__module__].__file__)
        files.add(source)
        files.update(Path(path) for path in get_relative_import_files(source))
    return sorted(files)


def saved_processor_class(model_dir: Path) -> type:
    """The Florence processor class a folder was saved with (e.g. `FlorenceVQAProcessor`, which keeps its answer
    vocabulary), else `FlorenceProcessor`."""
    path = model_dir / "processor_config.json"
    name = json.loads(path.read_text()).get("processor_class", "") if path.is_file() else ""
    candidate = getattr(modeling_florence, name, None)
    return candidate if isinstance(candidate, type) and issubclass(candidate, ProcessorMixin) else FlorenceProcessor


def processing_parts(model_dir: Path, model_class: type, config) -> list:
    """What the Hub folder holds to prepare the model's inputs, per task, so the task's pipeline finds it:

    - a detector: its `FlorenceDetectionImageProcessor` (aspect-keeping resize, padding, `pixel_mask`,
      `post_process_object_detection`), and for an open-vocabulary one the `FlorenceDetectionTokenizer` (which the
      zero-shot pipeline takes and the object-detection pipeline skips);
    - a video classifier: its `FlorenceVideoProcessor` alone (the video-classification pipeline's input);
    - every other model: the processor it was saved with (`FlorenceProcessor`, or `FlorenceVQAProcessor` with its
      answer vocabulary)."""
    if isinstance(config, FlorenceDetectionConfig):
        parts = [FlorenceDetectionImageProcessor.from_pretrained(model_dir)]
        if config.is_open_vocabulary:
            saved = (model_dir / "tokenizer_config.json").is_file()
            parts.append(FlorenceDetectionTokenizer.from_pretrained(model_dir) if saved
                         else FlorenceDetectionTokenizer.from_defaults())
        return parts
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        return [pixels_only_processor(model_dir, model_class)]
    processor = saved_processor_class(model_dir).from_pretrained(model_dir)
    if issubclass(model_class, FlorenceForVideoClassification):
        if getattr(processor, "video_processor", None) is None:
            raise ValueError(f"{model_dir} has no video processor: save the classifier with a FlorenceProcessor")
        return [processor.video_processor]
    return [processor]


def pixels_only_processor(model_dir: Path, model_class: type):
    """The image processor (an image classifier or tower saved as `finetune_classification.py` does) or video
    processor (a converted Video Swin) of a folder without a tokenizer, which its pixel-only model does not need."""
    if issubclass(model_class, VIDEO_ONLY_MODELS) and (model_dir / "video_preprocessor_config.json").is_file():
        return FlorenceVideoProcessor.from_pretrained(model_dir)
    if issubclass(model_class, IMAGE_ONLY_MODELS) and (model_dir / "preprocessor_config.json").is_file():
        return FlorenceImageProcessor.from_pretrained(model_dir)
    needs = "its video processor" if issubclass(model_class, VIDEO_ONLY_MODELS) else (
        "its image processor" if issubclass(model_class, IMAGE_ONLY_MODELS) else "its processor (with the tokenizer)")
    raise ValueError(f"{model_dir} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}) and no processor its "
                     f"{model_class.__name__} can use alone: save the model with {needs}")


def processing_classes(part) -> list[type]:
    """The classes whose module files a processing part needs (a processor: its own and its components')."""
    if not isinstance(part, ProcessorMixin):
        return [type(part)]
    components = (getattr(part, name, None) for name in ("image_processor", "video_processor", "tokenizer"))
    # Transformers' own components (Florence-2's CLIPImageProcessor) load by name: no module file to ship.
    return [type(part)] + [type(component) for component in components
                           if component is not None and is_ours(type(component))]


def is_ours(cls: type) -> bool:
    return cls.__module__.split(".", 1)[0] == "modeling_florence"


def image_processor_auto_map(image_processor) -> dict:
    return {"AutoImageProcessor": {"torchvision": reference(type(image_processor))}}


def write_auto_maps(output: Path, part) -> None:
    """The `auto_map` of a saved processing part, in the file Transformers reads it from."""
    if isinstance(part, ProcessorMixin):
        def update(content: dict) -> None:
            content["auto_map"] = {"AutoProcessor": reference(type(part))}
            if isinstance(content.get("image_processor"), dict) and is_ours(type(part.image_processor)):
                content["image_processor"]["auto_map"] = image_processor_auto_map(part.image_processor)
            if isinstance(content.get("video_processor"), dict):
                content["video_processor"]["auto_map"] = {"AutoVideoProcessor": reference(type(part.video_processor))}

        _update_json(output / "processor_config.json", update)
        write_auto_maps(output, part.tokenizer)
    elif isinstance(part, BaseVideoProcessor):
        _update_json(output / "video_preprocessor_config.json",
                     lambda c: c.update(auto_map={"AutoVideoProcessor": reference(type(part))}))
    elif isinstance(part, PreTrainedTokenizerBase):
        _update_json(output / "tokenizer_config.json",
                     lambda c: c.update(auto_map={"AutoTokenizer": [reference(type(part)), None]}))
    else:  # an image processor on its own: it is also what AutoProcessor gives
        auto_map = {**image_processor_auto_map(part), "AutoProcessor": reference(type(part))}
        _update_json(output / "preprocessor_config.json", lambda c: c.update(auto_map=auto_map))


def _update_json(path: Path, update) -> None:
    content = json.loads(path.read_text())
    update(content)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def export(model_dir: str | Path, output: str | Path, model_name: str | None = None) -> list[Path]:
    """Write the Hub folder; returns the files written (the upload list)."""
    model_dir, output = Path(model_dir), Path(output)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    architecture = (config.architectures or [None])[0]
    model_class = getattr(modeling_florence, architecture or "", None)
    if model_class is None:
        raise ValueError(f"{model_dir}/config.json names architecture {architecture!r}, not a Florence model class")
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output} is not empty; export writes a fresh folder")
    parts = processing_parts(model_dir, model_class, config)
    output.mkdir(parents=True, exist_ok=True)

    model = model_class.from_pretrained(model_dir)
    model.save_pretrained(output)
    for part in parts:
        part.save_pretrained(output)
    for source in module_files(model_class, type(config), *(cls for part in parts for cls in processing_classes(part))):
        shutil.copy2(source, output / source.name)

    _update_json(output / "config.json", lambda c: c.update(auto_map=model_auto_map(model_class, type(config))))
    for part in parts:
        write_auto_maps(output, part)
    results = model_dir / "eval_results.json"
    write_model_card(output, model_name=model_name or output.name, results=results if results.is_file() else None,
                     remote_code=True)
    if results.is_file():
        (output / "eval_results.json").write_text(json.dumps(load_results(results), indent=2) + "\n")
    return sorted(path for path in output.iterdir() if path.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved Florence model folder (with its processor)")
    parser.add_argument("--output", required=True, help="the folder to write (must be new or empty)")
    parser.add_argument("--model-name", default=None, help="name shown in the model card (default: the repo id)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the folder to this repo")
    parser.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list the files, upload nothing")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    files = export(args.model, args.output, model_name=args.model_name or args.push_to_hub)
    print(f"Wrote {len(files)} files to {args.output}:")
    for path in files:
        print(f"  {path.name} ({path.stat().st_size:,} bytes)")
    if args.push_to_hub:
        if args.dry_run:
            print(f"Dry run: would upload the {len(files)} files above to {args.push_to_hub}")
        else:
            from huggingface_hub import create_repo, upload_folder

            create_repo(args.push_to_hub, private=args.private, exist_ok=True)
            upload_folder(repo_id=args.push_to_hub, folder_path=args.output,
                          commit_message="Florence model exported with conversion/export_for_hub.py")
            print(f"Uploaded to https://huggingface.co/{args.push_to_hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
