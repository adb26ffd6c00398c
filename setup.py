"""Florence for Transformers: the Florence vision foundation model family, Hugging Face-native."""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent

setup(
    name="florence-transformers",
    version="0.1.0",
    description="Florence (CoSwin + UniCL two-tower model and adapters), Hugging Face-native",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # `configuration/` (presets, tokenizer files, recipes) is installed as package data of `modeling_florence`,
    # so presets load by name after a normal, non-editable install too.
    packages=["modeling_florence", "modeling_florence.presets"],
    package_dir={"modeling_florence": "modeling_florence", "modeling_florence.presets": "configuration"},
    package_data={"modeling_florence.presets": ["*.json", "*.yaml", "tokenizer/*"]},
    install_requires=[
        "torch>=2.4",
        "torchvision",
        # No upper cap: .ci/run also runs the common and LoRA suites on the newest Transformers that installs. On
        # 5.24, Transformers' own model.add_adapter/load_adapter ask for peft>=0.22 (not released yet); the PEFT route
        # works, and modeling_florence.peft_florence.add_adapter/load_adapter name both versions when they cannot run.
        "transformers>=5.0",
        "accelerate>=1.0",
        "datasets>=3.0",
        "safetensors",
        "huggingface-hub",
        "timm>=1.0",
        "evaluate",
        "peft",
        "pillow",
        "numpy",
        "ftfy",
        "regex",  # open_clip's tokenizer pattern (\p{L}), in tokenization_florence
        "pycocotools",  # COCO detection mAP (evaluation_florence_detection)
        "pycocoevalcap",  # CIDEr-D's CiderScorer (evaluation_florence_generation; its Java tools are not used)
    ],
    extras_require={
        "video": ["av"],
        "demo": ["gradio"],
        # The Space's tests: a gradio client and Playwright driving Debian's chromium (no browser download).
        "train": ["tensorboard", "matplotlib", "scikit-learn"],
        "dev": ["pytest", "open_clip_torch", "av", "tensorboard", "matplotlib", "scikit-learn", "ftfy", "regex",
                "gradio", "gradio_client", "playwright"],
    },
    entry_points={"console_scripts": ["florence-pretrain=modeling_florence.pretraining_florence:main"]},
)
