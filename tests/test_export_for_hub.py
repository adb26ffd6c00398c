"""Tests of `conversion/export_for_hub.py`."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

import modeling_florence as mf
from modeling_florence import FlorenceProcessor
from tests.conftest import write_video
from tests.test_common import (
    TESTERS,
    build,
    exported_model_classes,
    tiny_davit_detection_config,
    tiny_detection_config,
    tiny_text_config,
)
from florence_testing import IMAGE_SIZE, REMOTE_LOAD, assert_same_predictions, tiny_torchvision_swin3d

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "conversion"))
from export_for_hub import main as export_main  # noqa: E402


def run_remote(hub, tmp_path, cls, processing: dict, pipelines: list, auto_class: str) -> dict:
    inputs = TESTERS[cls.__name__].make_inputs(2)
    (tmp_path / "inputs.json").write_text(json.dumps({k: v.tolist() for k, v in inputs.items()}))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(hub), str(tmp_path / "inputs.json"), json.dumps(pipelines),
         json.dumps(sorted(processing)), auto_class, str(tmp_path / "clip.mp4")],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.split("RESULT", 1)[1])
    assert remote["processing"] == processing
    return remote


VQA_ANSWERS = ["yes", "no", "red", "2", "circle"]
DETECTION_CLASSES = ["red circle", "blue star", "green cross"]


# The pipelines each task model serves, run from the exported folder with the package blocked: (task, call kwargs,
# input: a 40x56 grey image or a small mp4 written with PyAV).
PIPELINES = {
    "FlorenceModel": [
        ("zero-shot-image-classification", {"candidate_labels": ["a red circle", "a blue square"]}, "image"),
    ],
    "FlorenceForImageClassification": [("image-classification", {}, "image")],
    "FlorenceForObjectDetection": [
        ("object-detection", {"threshold": 0.0}, "image"),
        ("zero-shot-object-detection", {"candidate_labels": ["yellow ring", "purple hexagon"], "threshold": 0.0},
         "image"),
    ],
    "FlorenceForVideoClassification": [("video-classification", {}, "video")],
}


# The processing Auto classes an exported folder serves and the class each must give (default: the Florence processor).
PROCESSING = {
    "FlorenceForObjectDetection": {"AutoProcessor": "FlorenceDetectionImageProcessor",
                                   "AutoImageProcessor": "FlorenceDetectionImageProcessor",
                                   "AutoTokenizer": "FlorenceDetectionTokenizer"},
    "FlorenceForVideoClassification": {"AutoVideoProcessor": "FlorenceVideoProcessor"},
    "FlorenceForVQA": {"AutoProcessor": "FlorenceVQAProcessor", "AutoImageProcessor": "FlorenceImageProcessor",
                       "AutoTokenizer": "FlorenceTokenizer"},
    **dict.fromkeys(("FlorenceForConditionalGeneration", "FlorenceGenerationModel"), {
        "AutoProcessor": "FlorenceGenerationProcessor", "AutoImageProcessor": "CLIPImageProcessor",
        "AutoTokenizer": "FlorenceGenerationTokenizer"}),
}


DEFAULT_PROCESSING = {"AutoProcessor": "FlorenceProcessor", "AutoImageProcessor": "FlorenceImageProcessor",
                      "AutoTokenizer": "FlorenceTokenizer"}


def build_exported(cls):
    """The tiny model the test exports; the detector is open-vocabulary with stored class names, so it serves both
    detection pipelines."""
    if cls is mf.FlorenceForObjectDetection:
        torch.manual_seed(0)
        model = cls(tiny_detection_config(text_config=tiny_text_config().to_dict(), projection_dim=24)).eval()
        model.set_class_names(DETECTION_CLASSES, mf.FlorenceDetectionTokenizer.from_defaults())
        return model
    return build(cls)


def save_with_processor(model, folder: Path) -> None:
    """The model with the processing files its task saves: a detector its detection image processor and tokenizer,
    VQA its processor with the answer vocabulary, every other model the Florence processor."""
    model.save_pretrained(folder)
    if isinstance(model, mf.FlorenceForObjectDetection):
        size = {"shortest_edge": IMAGE_SIZE, "longest_edge": 2 * IMAGE_SIZE}
        mf.FlorenceDetectionImageProcessor.from_detection_config(model.config, size=size).save_pretrained(folder)
        mf.FlorenceDetectionTokenizer.from_defaults().save_pretrained(folder)
    elif isinstance(model, mf.FlorenceForVQA):
        processor = mf.FlorenceVQAProcessor.from_defaults(image_size=IMAGE_SIZE, answer_vocabulary=VQA_ANSWERS)
        processor.save_pretrained(folder)
    elif isinstance(model, (mf.FlorenceForConditionalGeneration, mf.FlorenceGenerationModel)):
        tokens = model.num_image_tokens(IMAGE_SIZE, IMAGE_SIZE)
        mf.FlorenceGenerationProcessor.from_defaults(image_size=IMAGE_SIZE, image_seq_length=tokens).save_pretrained(folder)
    else:
        FlorenceProcessor.from_defaults(image_size=IMAGE_SIZE, num_frames=4).save_pretrained(folder)


# ----------------------------------------------------------------------------------------------------------------------
# The Hub rule: an exported folder's modules import only torch, torchvision, transformers, PIL, numpy, regex, the
# standard library and each other (relatively), at module level and inside functions (Transformers' remote-code
# check reads both). An optional import guarded by `try: ... except ImportError` (PyAV, ftfy) is not a requirement:
# Transformers' check skips those blocks too.
# ----------------------------------------------------------------------------------------------------------------------
HUB_PACKAGES = {"torch", "torchvision", "transformers", "PIL", "numpy", "regex"}


def forbidden_imports(folder: Path) -> list[str]:
    """`file:line: module` for every import in the folder's `.py` files that the Hub rule does not allow; a relative
    import must name a module the folder holds."""
    import ast

    def optional(tree) -> set[int]:
        """ids of the import nodes inside `try` blocks that catch ImportError (or ModuleNotFoundError)."""
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
                for handler in node.handlers
            ):
                guarded |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
        return guarded

    shipped = {path.stem for path in folder.glob("*.py")}
    found = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        guarded = optional(tree)
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom):
                names = [] if node.module and node.module.split(".")[0] in shipped else [f".{node.module}"]
            else:
                continue
            found += [f"{path.name}:{node.lineno}: {name}" for name in names
                      if name.startswith(".") or (name.split(".")[0] not in HUB_PACKAGES
                                                  and name.split(".")[0] not in sys.stdlib_module_names)]
    return found


def test_an_image_classifier_saved_with_its_image_processor_alone_exports(tmp_path):
    model = build(mf.FlorenceForImageClassification)
    model.save_pretrained(tmp_path / "model")
    size = {"shortest_edge": IMAGE_SIZE}
    mf.FlorenceImageProcessor(size=size, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(
        tmp_path / "model")  # what run_classification writes: no tokenizer
    assert export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub")]) == 0
    assert not (tmp_path / "hub" / "tokenizer.json").exists()
    pipelines = [("image-classification", {}, "image")]
    processing = {"AutoProcessor": "FlorenceImageProcessor", "AutoImageProcessor": "FlorenceImageProcessor"}
    remote = run_remote(tmp_path / "hub", tmp_path, mf.FlorenceForImageClassification, processing, pipelines,
                        "AutoModelForImageClassification")
    image = Image.fromarray(np.full((40, 56, 3), 200, np.uint8))
    assert_same_predictions(remote["pipelines"][0], pipeline("image-classification", model=str(tmp_path / "model"))(image))


def test_a_converted_video_swin_exports_with_its_video_processor(tmp_path):
    from conversion.convert_video_swin import main as convert_main

    torch.save(tiny_torchvision_swin3d().state_dict(), tmp_path / "swin3d.pth")
    convert_main(["--checkpoint", str(tmp_path / "swin3d.pth"), "--output", str(tmp_path / "model"),
                  "--num-frames", "4"])
    assert export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub")]) == 0
    write_video(tmp_path / "clip.mp4", frames=8)
    remote = run_remote(tmp_path / "hub", tmp_path, mf.FlorenceForVideoClassification,
                        {"AutoVideoProcessor": "FlorenceVideoProcessor"}, [("video-classification", {}, "video")],
                        "AutoModelForVideoClassification")
    local = pipeline("video-classification", model=str(tmp_path / "model"))(str(tmp_path / "clip.mp4"))
    assert_same_predictions(remote["pipelines"][0], local)


def test_a_davit_detector_exports_with_the_modules_of_its_tower(tmp_path):
    """The detector on Florence-2's DaViT (closed set): its folder ships the generation modules the DaViT backbone
    lives in and keeps to the Hub rule; the exported code builds it from the exported config and weights (loading in a
    fresh interpreter without the package is the CoSwin detector's test above, ~15 s)."""
    torch.manual_seed(0)
    model = mf.FlorenceForObjectDetection(tiny_davit_detection_config()).eval()
    save_with_processor(model, tmp_path / "model")
    assert export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub")]) == 0
    hub = tmp_path / "hub"
    assert {"modeling_florence_generation.py", "configuration_florence_generation.py"} <= {
        path.name for path in hub.glob("*.py")}
    assert forbidden_imports(hub) == []
    config = json.loads((hub / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "florence_davit"
    assert config["vision_config"]["out_features"] == ["stage1", "stage2"]
    reloaded = mf.FlorenceForObjectDetection.from_pretrained(hub).eval()
    inputs = TESTERS["FlorenceForObjectDetection[davit]"].make_inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_a_folder_without_the_tokenizer_its_model_needs_is_refused_by_name(tmp_path):
    model = build(mf.FlorenceModel)
    model.save_pretrained(tmp_path / "model")
    mf.FlorenceImageProcessor().save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"holds no tokenizer files .* FlorenceModel can use alone: save the model "
                                         r"with its processor \(with the tokenizer\)"):
        export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub")])


@pytest.mark.parametrize("cls", [pytest.param(c, id=c.__name__) for c in exported_model_classes()])
def test_exported_folder_loads_without_the_package(cls, tmp_path):
    model = build_exported(cls)
    save_with_processor(model, tmp_path / "model")
    assert export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub")]) == 0
    hub = tmp_path / "hub"

    config = json.loads((hub / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"].startswith("configuration_florence")
    auto_class = next(name for name, entry in config["auto_map"].items() if entry.endswith(f".{cls.__name__}"))
    python_files = {path.name for path in hub.glob("*.py")}
    assert "__init__.py" not in python_files and "shapes.py" not in python_files and "pretraining_florence.py" not in python_files
    assert {"configuration_florence.py"} <= python_files
    assert (hub / "model.safetensors").is_file() and not list(hub.glob("*.bin")) and (hub / "README.md").is_file()
    processing = PROCESSING.get(cls.__name__, DEFAULT_PROCESSING)

    inputs = TESTERS[cls.__name__].make_inputs(2)
    (tmp_path / "inputs.json").write_text(json.dumps({k: v.tolist() for k, v in inputs.items()}))
    pipelines = PIPELINES.get(cls.__name__, [])
    video = tmp_path / "clip.mp4"
    write_video(video, frames=8)
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(hub), str(tmp_path / "inputs.json"), json.dumps(pipelines),
         json.dumps(sorted(processing)), auto_class, str(video)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.split("RESULT", 1)[1])
    assert remote["processing"] == processing

    with torch.no_grad():
        out = model(**inputs)
    expected = next(v for v in out.values() if isinstance(v, (torch.Tensor, tuple)))
    expected = expected[0] if isinstance(expected, tuple) else expected
    torch.testing.assert_close(torch.tensor(remote["output"]), expected, atol=1e-5, rtol=1e-4)
    if "ids" in remote:
        assert remote["ids"] == FlorenceProcessor.from_defaults().tokenizer(["a red circle"])["input_ids"]
    if cls is mf.FlorenceForVQA:
        assert remote["answers"] == VQA_ANSWERS
    image = Image.fromarray(np.full((40, 56, 3), 200, np.uint8))
    for (task, kwargs, kind), remote_result in zip(pipelines, remote["pipelines"], strict=True):
        local = pipeline(task, model=str(tmp_path / "model"))(image if kind == "image" else str(video), **kwargs)
        assert_same_predictions(remote_result, local)


def test_push_to_hub_dry_run_lists_the_upload(tmp_path, capsys):
    save_with_processor(build(exported_model_classes()[0]), tmp_path / "model")
    export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub"),
                 "--push-to-hub", "someone/florence-test", "--dry-run"])
    printed = capsys.readouterr().out
    assert "Dry run: would upload" in printed and "model.safetensors" in printed and "config.json" in printed


def test_export_refuses_a_non_florence_folder_and_a_used_output(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="not a Florence model class"):
        export_main(["--model", str(tmp_path / "bert"), "--output", str(tmp_path / "out")])
    save_with_processor(build(exported_model_classes()[0]), tmp_path / "model")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "used")])


@pytest.mark.parametrize("cls", [pytest.param(c, id=c.__name__) for c in exported_model_classes()])
def test_exported_folders_import_only_the_hub_packages(cls, tmp_path):
    """Each task's export (model, config, processor, tokenizer modules) parsed with `ast`: no `datasets`, `evaluate`,
    `modeling_florence` or other package, not even inside a function."""
    save_with_processor(build_exported(cls), tmp_path / "model")
    assert export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub")]) == 0
    assert list((tmp_path / "hub").glob("*.py"))
    assert forbidden_imports(tmp_path / "hub") == []


def test_the_hub_rule_check_catches_imports_inside_functions(tmp_path):
    (tmp_path / "modeling_x.py").write_text("import torch\nfrom .configuration_x import C\n\n\ndef f():\n"
                                            "    import datasets\n    from .evaluation_x import g\n"
                                            "    try:\n        import av\n"
                                            "    except ImportError:\n        av = None\n")
    (tmp_path / "configuration_x.py").write_text("import json\nfrom transformers import PreTrainedConfig\n")
    assert forbidden_imports(tmp_path) == ["modeling_x.py:6: datasets", "modeling_x.py:7: .evaluation_x"]
