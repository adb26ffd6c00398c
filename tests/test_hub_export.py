"""Hub export: the exported folder alone (no `modeling_florence` importable) loads with `trust_remote_code=True`
through the Auto classes and the task's pipeline, and gives the package's outputs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_florence import FlorenceProcessor
from tests.test_common import TESTERS, build, exported_model_classes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "conversion"))
from export_for_hub import main as export_main  # noqa: E402

# The pipeline each task model serves, run from the exported folder with the package blocked.
PIPELINES = {
    "FlorenceModel": ("zero-shot-image-classification", {"candidate_labels": ["a red circle", "a blue square"]}),
    "FlorenceForImageClassification": ("image-classification", {}),
}

# Runs in a fresh interpreter where `import modeling_florence` fails: everything must come from the folder.
REMOTE_LOAD = r"""
import json, sys
sys.modules["modeling_florence"] = None
import numpy as np, torch
from PIL import Image
import transformers
from transformers import AutoConfig, AutoModel, AutoProcessor, AutoImageProcessor, AutoTokenizer, pipeline
folder, inputs_path, task, task_kwargs, auto_class = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
AutoModel.from_pretrained(folder, trust_remote_code=True)
auto = getattr(transformers, auto_class)
if auto_class == "AutoBackbone":
    # Transformers 5.23's AutoBackbone asks the Hub whether a name is a repository before reading it, which fails for
    # a local path; a Hub repo id passes that check and then takes this very path.
    from transformers.models.auto.auto_factory import _BaseAutoBackboneClass
    model = super(_BaseAutoBackboneClass, auto).from_pretrained(folder, trust_remote_code=True).eval()
else:
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
assert "modeling_florence" not in type(model).__module__.split(".")[0], type(model).__module__
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
inputs = {k: torch.tensor(v) if k != "pixel_values" else torch.tensor(v, dtype=torch.float32)
          for k, v in json.load(open(inputs_path)).items()}
with torch.no_grad():
    out = model(**inputs)
first = next(v for v in out.values() if isinstance(v, torch.Tensor) or isinstance(v, tuple))
first = first[0] if isinstance(first, tuple) else first
result = {"model": type(model).__name__, "output": first.tolist(),
          "ids": tokenizer(["a red circle"])["input_ids"]}
if task:
    image = Image.fromarray(np.full((40, 56, 3), 200, np.uint8))
    result["pipeline"] = pipeline(task, model=folder, trust_remote_code=True)(image, **task_kwargs)
print("RESULT" + json.dumps(result))
"""


def save_with_processor(model, folder: Path) -> None:
    model.save_pretrained(folder)
    FlorenceProcessor.from_defaults(image_size=48).save_pretrained(folder)


@pytest.mark.parametrize("cls", [pytest.param(c, id=c.__name__) for c in exported_model_classes()])
def test_exported_folder_loads_without_the_package(cls, tmp_path):
    model = build(cls)
    save_with_processor(model, tmp_path / "model")
    assert export_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub")]) == 0
    hub = tmp_path / "hub"

    config = json.loads((hub / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"].split(".")[0].startswith("configuration_florence")
    auto_class = next(name for name, entry in config["auto_map"].items() if entry.endswith(f".{cls.__name__}"))
    python_files = {path.name for path in hub.glob("*.py")}
    assert "__init__.py" not in python_files and "shapes.py" not in python_files and "pretraining_florence.py" not in python_files
    assert {"configuration_florence.py", "processing_florence.py", "tokenization_florence.py"} <= python_files
    assert (hub / "model.safetensors").is_file() and not list(hub.glob("*.bin")) and (hub / "README.md").is_file()

    inputs = TESTERS[cls.__name__].make_inputs(2)
    (tmp_path / "inputs.json").write_text(json.dumps({k: v.tolist() for k, v in inputs.items()}))
    task, task_kwargs = PIPELINES.get(cls.__name__, ("", {}))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(hub), str(tmp_path / "inputs.json"), task, json.dumps(task_kwargs),
         auto_class],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.split("RESULT", 1)[1])

    with torch.no_grad():
        out = model(**inputs)
    expected = next(v for v in out.values() if isinstance(v, (torch.Tensor, tuple)))
    expected = expected[0] if isinstance(expected, tuple) else expected
    torch.testing.assert_close(torch.tensor(remote["output"]), expected, atol=1e-5, rtol=1e-4)
    assert remote["ids"] == FlorenceProcessor.from_defaults().tokenizer(["a red circle"])["input_ids"]
    if task:
        from transformers import pipeline

        image = Image.fromarray(np.full((40, 56, 3), 200, np.uint8))
        local = pipeline(task, model=str(tmp_path / "model"))(image, **task_kwargs)
        assert [r["label"] for r in remote["pipeline"]] == [r["label"] for r in local]
        np.testing.assert_allclose([r["score"] for r in remote["pipeline"]], [r["score"] for r in local], atol=1e-5)


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
