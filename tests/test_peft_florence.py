"""`peft_florence`: Transformers' adapter route on a PEFT that the installed Transformers finds too old, and the
package's requirements, which must not hold users below the newest Transformers the suites pass on."""

import ast
import importlib.metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from transformers.integrations import peft as transformers_peft

import modeling_florence as mf
from modeling_florence import peft_florence
from modeling_florence.peft_florence import default_lora_config

ROOT = Path(__file__).resolve().parent.parent
# The newest Transformers the common and LoRA suites pass on (`.ci/run` installs the newest that installs).
NEWEST_TESTED = "5.24.0"


def tiny_classifier():
    config = mf.FlorenceVisionConfig(embed_dim=8, depths=[2], num_heads=[1], window_size=2, image_size=16,
                                     num_labels=2)
    return mf.FlorenceForImageClassification(config)


@pytest.mark.parametrize("route", ["add_adapter", "load_adapter"])
def test_a_too_old_peft_gets_an_error_naming_both_versions_and_the_route_that_works(route, monkeypatch, tmp_path):
    monkeypatch.setattr(transformers_peft, "MIN_PEFT_VERSION", "99.0.0")
    model = tiny_classifier()
    installed = importlib.metadata.version("peft")
    message = (rf"need peft>=99\.0\.0, but peft {installed} is installed.*pip install -U 'peft>=99\.0\.0'"
               r".*get_peft_model.*PeftModel\.from_pretrained")
    with pytest.raises(ValueError, match=message):
        if route == "add_adapter":
            peft_florence.add_adapter(model, default_lora_config(model, r=2))
        else:
            from peft import get_peft_model

            get_peft_model(tiny_classifier(), default_lora_config(model, r=2)).save_pretrained(tmp_path)
            peft_florence.load_adapter(model, tmp_path)


def test_a_recent_enough_peft_takes_transformers_route(monkeypatch, tmp_path):
    monkeypatch.setattr(transformers_peft, "MIN_PEFT_VERSION", "0.0.1")
    assert peft_florence.transformers_peft_problem() is None
    model = tiny_classifier()
    peft_florence.add_adapter(model, default_lora_config(model, r=2), adapter_name="shapes")
    assert "shapes" in model.peft_config
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        peft_florence.load_adapter(tiny_classifier(), tmp_path)


def test_setup_allows_the_newest_tested_transformers():
    tree = ast.parse((ROOT / "setup.py").read_text())
    requirements = next(node.value for node in ast.walk(tree)
                        if isinstance(node, ast.keyword) and node.arg == "install_requires")
    transformers = [ast.literal_eval(item) for item in requirements.elts
                    if ast.literal_eval(item).startswith("transformers")]
    assert len(transformers) == 1
    assert NEWEST_TESTED in SpecifierSet(transformers[0][len("transformers"):]), transformers[0]
