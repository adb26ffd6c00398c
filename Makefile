# The README's commands. `make test` is what CI runs on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test bench demo demo-video demo-detection demo-vqa demo-generation app clean

install: $(STAMP)

# torch/torchvision and Transformers are pinned here (the versions the whole suite is tested with), with the package
# and its extras. .ci/install.py installs them with uv given pip's configuration (parallel: ~50 s from a cold cache on
# 2 cores, pip took ~165 s), or with pip when uv fails. setup.py itself does not cap Transformers: .ci/run also runs
# the common and LoRA suites on the newest Transformers that installs, in a second environment.
TRANSFORMERS_PIN ?= transformers==5.23.0
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) .ci/install.py torch==2.14.1 torchvision==0.29.1 "$(TRANSFORMERS_PIN)"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) bench/bench_towers.py
	$(PY) bench/bench_pretrain.py
	$(PY) bench/bench_video.py
	$(PY) bench/bench_detection.py
	$(PY) bench/bench_vqa.py
	$(PY) bench/bench_generation.py

# The main job: generate Florence Shapes, pretrain florence-tiny with UniCL, evaluate held-out zero-shot accuracy
# and retrieval, save the model and its processor to outputs/florence-tiny-shapes.
demo: install
	$(PY) examples/pretrain_unicl.py --recipe configuration/recipe-unicl-tiny.json --output outputs/florence-tiny-shapes

# VQA on the `make demo` model (run first when its folder is missing): METER fusion on its towers, fine-tuned with
# Trainer on Florence Shapes VQA, evaluated on held-out questions (per question type, with a blind baseline), saved
# with its processor to outputs/florence-vqa-tiny-shapes.
demo-vqa: install
	test -d outputs/florence-tiny-shapes || $(MAKE) demo
	$(PY) examples/finetune_vqa.py --florence outputs/florence-tiny-shapes --output outputs/florence-vqa-tiny-shapes --bf16

# The Gradio demo Space on the `make demo*` models (FLORENCE_MODEL, FLORENCE_DETECTION_MODEL, FLORENCE_VQA_MODEL,
# FLORENCE_VIDEO_MODEL, FLORENCE_GENERATION_MODEL for the Florence-2 tasks tab = folder or repo id to change; a
# missing one is a note in its tab), http://127.0.0.1:7860.
app: install
	$(PY) examples/space/app.py
# Detection demo: from the `make demo` model (made first if missing), fine-tune florence-detection-tiny on Shapes
# detection with Trainer, closed set (8 shapes) and open vocabulary (colour-shape names, 8 classes never seen as boxes),
# evaluate COCO mAP on held-out images, save each detector with its processor and a predictions.png.
demo-detection: install
	test -d outputs/florence-tiny-shapes || $(MAKE) demo
	$(PY) examples/finetune_detection.py --base outputs/florence-tiny-shapes --output outputs/florence-detection-tiny-shapes
	$(PY) examples/finetune_detection.py --base outputs/florence-tiny-shapes --open-vocabulary \
		--output outputs/florence-detection-tiny-shapes-open-vocabulary

clean:
	rm -rf $(VENV) build *.egg-info

# Video CoSwin: inflate the `make demo` model into florence-video-tiny, report zero-shot action accuracy, fine-tune on
# Shapes video (video-text UniCL, then classification), evaluate held-out videos with multi-view testing (2 clips x 3
# crops, probabilities averaged per video), save a pipeline-ready folder.
demo-video: install
	test -d outputs/florence-tiny-shapes || $(MAKE) demo
	$(PY) examples/finetune_video.py --image-model outputs/florence-tiny-shapes --output outputs/florence-video-tiny-shapes

# Florence-2 demo: a tiny BART encoder-decoder on the (frozen) CoSwin tower of the `make demo` model (made first if
# missing), trained with Seq2SeqTrainer on Florence Shapes multi-task (captions, <OD>, grounding, referring
# segmentation, region to category, VQA), scored per task on held-out images from generated text, saved with its
# processor to outputs/florence-generation-tiny-shapes (served by pipeline("image-text-to-text") and the Space).
demo-generation: install
	test -d outputs/florence-tiny-shapes || $(MAKE) demo
	$(PY) examples/finetune_generation.py --base outputs/florence-tiny-shapes --output outputs/florence-generation-tiny-shapes
