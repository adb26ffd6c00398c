# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Florence for Transformers: CoSwin + UniCL two-tower model, processors and data, registered with the Auto classes."""

import os

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForObjectDetection,
    AutoModelForPreTraining,
    AutoModelForVideoClassification,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
    AutoTokenizer,
    AutoVideoProcessor,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_BACKBONE_MAPPING_NAMES,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES,
    MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
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
from .image_processing_florence import FlorenceImageProcessor, FlorenceImageProcessorPil, source_normalization
from .loss_florence import global_batch_unicl_loss
from .modeling_florence import (
    FlorenceModel,
    FlorenceOutput,
    FlorencePreTrainedModel,
    FlorenceTextModel,
    unicl_loss,
)
from .processing_florence import FlorenceProcessor, clean_text, default_tokenizer_path, text_label, text_labels
from .tokenization_florence import FlorenceTokenizer
# Shapes is imported on first use (`mf.build_detection`), not here: `python -m modeling_florence.shapes` runs the
# module as __main__, and an earlier import by this package would make runpy warn about it.
_SHAPES_NAMES = ("build_classification", "build_detection", "build_florence2", "build_pairs", "build_video",
                 "build_vqa", "class_names", "vqa_score", "vqa_soft_scores")


def __getattr__(name: str):
    if name in _SHAPES_NAMES:
        from . import shapes

        return getattr(shapes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SHAPES_NAMES])
from .video_processing_florence import FlorenceVideoProcessor, decode_video
from .configuration_florence_video import FlorenceVideoConfig, FlorenceVideoVisionConfig
from .modeling_florence_video import (
    FlorenceForVideoClassification,
    FlorenceVideoModel,
    FlorenceVideoOutput,
    FlorenceVideoVisionModel,
    FlorenceVideoVisionModelOutput,
)

from .configuration_florence_detection import FlorenceDetectionConfig
from .image_processing_florence_detection import FlorenceDetectionImageProcessor
from .tokenization_florence_detection import FlorenceDetectionTokenizer
from .modeling_florence_detection import (
    FlorenceDetectionPreTrainedModel,
    FlorenceForObjectDetection,
    FlorenceObjectDetectionOutput,
)
from .modeling_florence_classification import FlorenceForImageClassification, check_class_names
from .peft_florence import default_lora_config
from .pipelines_florence import register_pipelines
from .configuration_florence_vqa import FlorenceVQAConfig
from .modeling_florence_vqa import (
    FlorenceForVisionLanguagePretraining,
    FlorenceForVQA,
    FlorenceFusionModel,
    FlorenceFusionModelOutput,
    FlorenceFusionPreTrainedModel,
    FlorenceVisionLanguagePretrainingOutput,
    FlorenceVQAOutput,
)
from .processing_florence_vqa import (
    FlorenceVQAProcessor,
    build_answer_vocabulary,
    normalize_answer,
    post_process_vqa,
)

from .configuration_florence_generation import FlorenceDaViTConfig, FlorenceGenerationConfig
from .modeling_florence_generation import (
    FlorenceDaViTBackbone,
    FlorenceForConditionalGeneration,
    FlorenceGenerationModel,
    FlorenceGenerationPreTrainedModel,
)
from .processing_florence_generation import (
    FlorenceGenerationProcessor,
    FlorenceGenerationTokenizer,
    count_partial_objects,
    dequantize,
    location_text,
    quantize,
)

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    """Register every Florence model type with the Auto classes (configs, models, processors, tokenizers), so saved
    folders load through `Auto*.from_pretrained` and the pipelines; one section per model family."""
    image_processors = {"torchvision": FlorenceImageProcessor, "pil": FlorenceImageProcessorPil}
    # Two-tower models (image and video) and their towers.
    for config_class in (FlorenceVisionConfig, FlorenceTextConfig, FlorenceConfig, FlorenceVideoVisionConfig,
                         FlorenceVideoConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for auto_class, config_class, model_class in (
        (AutoModel, FlorenceVisionConfig, FlorenceVisionModel),
        (AutoModel, FlorenceTextConfig, FlorenceTextModel),
        (AutoModel, FlorenceConfig, FlorenceModel),
        (AutoModelForZeroShotImageClassification, FlorenceConfig, FlorenceModel),
        (AutoBackbone, FlorenceVisionConfig, FlorenceVisionBackbone),
        (AutoModel, FlorenceVideoVisionConfig, FlorenceVideoVisionModel),
        (AutoModel, FlorenceVideoConfig, FlorenceVideoModel),
        (AutoModelForVideoClassification, FlorenceVideoConfig, FlorenceForVideoClassification),
    ):
        auto_class.register(config_class, model_class, exist_ok=True)
    # A two-tower folder also gives a backbone (its image tower and `vision_config`, see
    # `FlorenceVisionBackbone.from_pretrained`); `register` insists on the backbone's own config class, so map it here.
    AutoBackbone._model_mapping.register(FlorenceConfig, FlorenceVisionBackbone, exist_ok=True)
    for config_class in (FlorenceConfig, FlorenceVisionConfig):
        AutoImageProcessor.register(config_class, image_processor_classes=image_processors, exist_ok=True)
    for config_class in (FlorenceConfig, FlorenceVideoConfig):
        AutoVideoProcessor.register(config_class, FlorenceVideoProcessor, exist_ok=True)
        AutoProcessor.register(config_class, FlorenceProcessor, exist_ok=True)
    for config_class in (FlorenceConfig, FlorenceTextConfig, FlorenceVideoConfig):
        AutoTokenizer.register(config_class, fast_tokenizer_class=FlorenceTokenizer, exist_ok=True)
    # Name the towers and the backbone where Transformers lists its own base models (`AutoModel.register` does not),
    # so generic code (Trainer checks, the common model tests) knows they return features, not a loss.
    MODEL_MAPPING_NAMES.setdefault(FlorenceVisionConfig.model_type, FlorenceVisionModel.__name__)
    MODEL_MAPPING_NAMES.setdefault(FlorenceTextConfig.model_type, FlorenceTextModel.__name__)
    MODEL_FOR_BACKBONE_MAPPING_NAMES.setdefault(FlorenceVisionConfig.model_type, FlorenceVisionBackbone.__name__)

    # Image classification (fine-tuning): a vision folder, or a two-tower folder (its image tower, a new head: see
    # `FlorenceForImageClassification`) (listed for the pipeline in `_list_pipeline_models`).
    AutoModelForImageClassification.register(FlorenceVisionConfig, FlorenceForImageClassification, exist_ok=True)
    AutoModelForImageClassification._model_mapping.register(FlorenceConfig, FlorenceForImageClassification,
                                                            exist_ok=True)

    # Object detection: both detection pipelines run on a saved detector folder. The object-detection pipeline must
    # not get a tokenizer (FlorenceDetectionTokenizer declines it), the zero-shot one does.
    AutoConfig.register(FlorenceDetectionConfig.model_type, FlorenceDetectionConfig, exist_ok=True)
    for auto_class in (AutoModel, AutoModelForObjectDetection, AutoModelForZeroShotObjectDetection):
        auto_class.register(FlorenceDetectionConfig, FlorenceForObjectDetection, exist_ok=True)
    AutoImageProcessor.register(
        FlorenceDetectionConfig, image_processor_classes={"torchvision": FlorenceDetectionImageProcessor}, exist_ok=True
    )
    AutoTokenizer.register(FlorenceDetectionConfig, fast_tokenizer_class=FlorenceDetectionTokenizer, exist_ok=True)

    # METER adapter: AutoModel is the fusion model; a VQA folder holds a VQA processor.
    AutoConfig.register(FlorenceVQAConfig.model_type, FlorenceVQAConfig, exist_ok=True)
    AutoModel.register(FlorenceVQAConfig, FlorenceFusionModel, exist_ok=True)
    AutoModelForVisualQuestionAnswering.register(FlorenceVQAConfig, FlorenceForVQA, exist_ok=True)
    AutoModelForPreTraining.register(FlorenceVQAConfig, FlorenceForVisionLanguagePretraining, exist_ok=True)
    AutoImageProcessor.register(FlorenceVQAConfig, image_processor_classes=image_processors, exist_ok=True)
    AutoProcessor.register(FlorenceVQAConfig, FlorenceVQAProcessor, exist_ok=True)
    AutoTokenizer.register(FlorenceVQAConfig, fast_tokenizer_class=FlorenceTokenizer, exist_ok=True)
    MODEL_MAPPING_NAMES.setdefault(FlorenceVQAConfig.model_type, FlorenceFusionModel.__name__)

    # Florence-2 generation (DaViT or CoSwin tower on Transformers' Florence-2 classes).
    from transformers import AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    AutoConfig.register(FlorenceGenerationConfig.model_type, FlorenceGenerationConfig, exist_ok=True)
    # Its DaViT as a backbone (from a backbone, DaViT generation or Transformers florence2 folder).
    AutoConfig.register(FlorenceDaViTConfig.model_type, FlorenceDaViTConfig, exist_ok=True)
    AutoModel.register(FlorenceDaViTConfig, FlorenceDaViTBackbone, exist_ok=True)
    AutoBackbone.register(FlorenceDaViTConfig, FlorenceDaViTBackbone, exist_ok=True)
    AutoBackbone._model_mapping.register(FlorenceGenerationConfig, FlorenceDaViTBackbone, exist_ok=True)
    MODEL_FOR_BACKBONE_MAPPING_NAMES.setdefault(FlorenceDaViTConfig.model_type, FlorenceDaViTBackbone.__name__)
    AutoModel.register(FlorenceGenerationConfig, FlorenceGenerationModel, exist_ok=True)
    AutoModelForImageTextToText.register(FlorenceGenerationConfig, FlorenceForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(FlorenceGenerationConfig, FlorenceGenerationProcessor, exist_ok=True)
    AutoTokenizer.register(FlorenceGenerationConfig, fast_tokenizer_class=FlorenceGenerationTokenizer, exist_ok=True)
    MODEL_MAPPING_NAMES.setdefault(FlorenceGenerationConfig.model_type, FlorenceGenerationModel.__name__)
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.setdefault(
        FlorenceGenerationConfig.model_type, FlorenceForConditionalGeneration.__name__
    )


def _list_pipeline_models() -> None:
    """Name our models where Transformers lists the models of each pipeline task. A pipeline checks its model's
    class name against these lists (`Pipeline.check_model_type`) and otherwise logs a "not supported" error, which
    `Auto*.register` does not prevent for every task (object detection and video classification among them)."""
    for names, config_class, model_class in (
        (MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES, FlorenceDetectionConfig, FlorenceForObjectDetection),
        (MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES, FlorenceDetectionConfig, FlorenceForObjectDetection),
        (MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES, FlorenceConfig, FlorenceModel),
        (MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, FlorenceVisionConfig, FlorenceForImageClassification),
        (MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES, FlorenceVideoConfig, FlorenceForVideoClassification),
    ):
        names.setdefault(config_class.model_type, model_class.__name__)


def _load_local_backbone_folders() -> None:
    """Let `AutoBackbone.from_pretrained` read a local folder without asking the Hub.

    Transformers 5.23's `AutoBackbone.from_pretrained` first asks the Hub whether the name is a repository (to route
    timm names), which fails for a local path (an invalid repo id) or offline. A path to an existing folder now goes
    straight to the ordinary Auto loading; every other name keeps Transformers' behaviour."""
    from transformers.models.auto.auto_factory import _BaseAutoBackboneClass

    original = AutoBackbone.from_pretrained.__func__
    if getattr(original, "_reads_local_folders", False):
        return

    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)) and os.path.isdir(
            pretrained_model_name_or_path
        ):
            kwargs.pop("use_timm_backbone", None)
            return super(_BaseAutoBackboneClass, cls).from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return original(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    from_pretrained._reads_local_folders = True
    from_pretrained.__doc__ = original.__doc__
    AutoBackbone.from_pretrained = classmethod(from_pretrained)


_register_auto_classes()
_list_pipeline_models()
_load_local_backbone_folders()
register_pipelines()  # Florence models' pipeline inputs go through image_loading_florence
