# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Florence for Transformers: CoSwin + UniCL two-tower model, processors and data, registered with the Auto classes."""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
    AutoVideoProcessor,
    CLIPTokenizer,
)

from .configuration_florence import (
    FlorenceConfig,
    FlorenceTextConfig,
    FlorenceVisionConfig,
    available_presets,
    load_preset,
    presets_dir,
)
from .modeling_coswin import (
    FlorenceVisionBackbone,
    FlorenceVisionModel,
    FlorenceVisionModelOutput,
    FlorenceVisionPreTrainedModel,
)
from .image_processing_florence import FlorenceImageProcessor, FlorenceImageProcessorPil
from .modeling_florence import (
    FlorenceModel,
    FlorenceOutput,
    FlorencePreTrainedModel,
    FlorenceTextModel,
    unicl_loss,
)
from .processing_florence import FlorenceProcessor, clean_text, default_tokenizer_path, text_label, text_labels
from .shapes import (
    build_classification,
    build_detection,
    build_pairs,
    build_video,
    build_vqa,
    class_names,
    vqa_score,
    vqa_soft_scores,
)
from .video_processing_florence import FlorenceVideoProcessor, decode_video

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    """Make `AutoConfig`, `AutoModel`, `AutoBackbone` and the zero-shot Auto class know the Florence model types."""
    for config_class in (FlorenceVisionConfig, FlorenceTextConfig, FlorenceConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(FlorenceVisionConfig, FlorenceVisionModel, exist_ok=True)
    AutoModel.register(FlorenceTextConfig, FlorenceTextModel, exist_ok=True)
    AutoModel.register(FlorenceConfig, FlorenceModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(FlorenceConfig, FlorenceModel, exist_ok=True)
    AutoBackbone.register(FlorenceVisionConfig, FlorenceVisionBackbone, exist_ok=True)
    for config_class in (FlorenceConfig, FlorenceVisionConfig):
        AutoImageProcessor.register(
            config_class,
            image_processor_classes={"torchvision": FlorenceImageProcessor, "pil": FlorenceImageProcessorPil},
            exist_ok=True,
        )
    AutoVideoProcessor.register(FlorenceConfig, FlorenceVideoProcessor, exist_ok=True)
    AutoProcessor.register(FlorenceConfig, FlorenceProcessor, exist_ok=True)
    for config_class in (FlorenceConfig, FlorenceTextConfig):
        AutoTokenizer.register(config_class, fast_tokenizer_class=CLIPTokenizer, exist_ok=True)


_register_auto_classes()


# Video CoSwin (issue 13): Florence's "time" adapter, inflated from the image model.
from transformers import AutoModelForVideoClassification  # noqa: E402

from .configuration_florence_video import FlorenceVideoConfig, FlorenceVideoVisionConfig  # noqa: E402
from .modeling_florence_video import (  # noqa: E402
    FlorenceForVideoClassification,
    FlorenceVideoModel,
    FlorenceVideoOutput,
    FlorenceVideoVisionModel,
    FlorenceVideoVisionModelOutput,
)


def _register_video_auto_classes() -> None:
    """`AutoConfig` / `AutoModel` / `AutoModelForVideoClassification` and the processors for the video model types."""
    for config_class in (FlorenceVideoVisionConfig, FlorenceVideoConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(FlorenceVideoVisionConfig, FlorenceVideoVisionModel, exist_ok=True)
    AutoModel.register(FlorenceVideoConfig, FlorenceVideoModel, exist_ok=True)
    AutoModelForVideoClassification.register(FlorenceVideoConfig, FlorenceForVideoClassification, exist_ok=True)
    AutoVideoProcessor.register(FlorenceVideoConfig, FlorenceVideoProcessor, exist_ok=True)
    AutoProcessor.register(FlorenceVideoConfig, FlorenceProcessor, exist_ok=True)
    AutoTokenizer.register(FlorenceVideoConfig, fast_tokenizer_class=CLIPTokenizer, exist_ok=True)


_register_video_auto_classes()
