# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""`FlorenceForImageClassification`: the CoSwin image tower, its pooled feature and a linear classifier.

It follows Transformers' `SwinForImageClassification` (config = the vision config with `num_labels` / `id2label`,
loss chosen by `config.problem_type`, an `ImageClassifierOutput`), so `AutoModelForImageClassification`, the
`image-classification` pipeline and `Trainer` work unchanged. The encoder sits in `vision_model`, so
`from_pretrained` reads the image tower of a CoSwin folder or of a two-tower `FlorenceModel` folder (the classifier is
then freshly initialised).

`FlorenceForImageClassification.from_florence(...)` starts the classifier from a two-tower model's zero-shot
classifier instead: with `T` the `(classes, D)` normalised class-text embeddings (prompt-template ensembles), `P` the
`(D, hidden)` visual projection and `s` the temperature, `W = s * T @ P` and zero bias. The logits are then the
zero-shot logits times `|P x|` (the image feature is not normalised), a positive factor per image, so every image's
ranking of the classes - and so its prediction - equals zero-shot classification's at step 0.
"""

import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_florence import FlorenceVisionConfig
from .modeling_coswin import FlorenceVisionModel, FlorenceVisionPreTrainedModel, resolve_output_flags


def check_class_names(class_names) -> list[str]:
    """Class names as a list of distinct, non-empty strings, or a `ValueError` naming what is wrong."""
    if isinstance(class_names, str) or class_names is None:
        raise ValueError(f"class_names must be a list of class-name strings, got {class_names!r}")
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty: give at least one class name (two for a useful classifier)")
    bad = [name for name in names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ValueError(f"class_names must be non-empty strings; got {bad!r}")
    seen, duplicates = set(), []
    for name in names:
        key = name.strip().lower()
        if key in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(key)
    if duplicates:
        raise ValueError(
            f"class_names holds duplicates (compared ignoring case and outer spaces): {duplicates}; each class needs "
            "its own name, or two classes would share one text embedding"
        )
    return names


class FlorenceForImageClassification(FlorenceVisionPreTrainedModel):
    """CoSwin + global average pooling + a linear classifier (the shape of Transformers' `SwinForImageClassification`).

    The config is a `FlorenceVisionConfig` carrying `num_labels`, `id2label` / `label2id` and optionally
    `problem_type` (`"single_label_classification"`, `"multi_label_classification"` or `"regression"`; inferred from
    the labels when unset, as in Transformers).
    """

    # LoRA defaults (`modeling_florence.peft_florence.default_lora_config`): the head trains in full with the adapter.
    lora_modules_to_save = ("classifier",)

    def __init__(self, config: FlorenceVisionConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = FlorenceVisionModel._from_config(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Also from a two-tower folder through `AutoModelForImageClassification`, which hands over the folder's
        `FlorenceConfig`: the classifier takes its `vision_config` and the label fields asked for (`num_labels`,
        `id2label`, `problem_type`). The head is then new; `from_florence` initialises it from the text tower instead."""
        if config is not None and hasattr(config, "vision_config"):
            # The label fields Auto loading set on the composite config (`num_labels=` becomes its `id2label`).
            labels = {"id2label": config.id2label, "label2id": config.label2id, "problem_type": config.problem_type}
            config = FlorenceVisionConfig.from_dict({**config.vision_config.to_dict(), **labels})
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.get_input_embeddings()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        labels: `(B,)` class ids (single-label), `(B, num_labels)` floats (multi-label) or `(B,)` floats
            (regression, `num_labels=1`); the loss follows `config.problem_type`.
        kwargs: loss arguments, e.g. `num_items_in_batch` (passed by `Trainer`).
        """
        output_hidden_states, output_attentions, return_dict = resolve_output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        outputs = self.vision_model(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)
        # Extra keyword arguments are loss arguments (Trainer's `num_items_in_batch` under gradient accumulation).
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()

    @classmethod
    def from_florence(
        cls,
        florence_model_or_folder,
        class_names: list[str],
        templates: list[str] | str | None = None,
        processor=None,
        calibration_images=None,
        **config_overrides,
    ) -> "FlorenceForImageClassification":
        """A classifier whose head is the zero-shot classifier of a two-tower Florence model.

        Args:
            florence_model_or_folder: a `FlorenceModel` or the folder of one (`save_pretrained` output).
            class_names: one name per class, in label order (they become `id2label`); distinct and non-empty.
            templates: prompt templates (a list of strings with one `{}`, or a JSON file of them; default: the
                shipped set), ensembled as in `zero_shot_classification`.
            processor: the model's `FlorenceProcessor`; default: the folder's own, else the shipped tokenizer (only
                its tokenizer is used here).
            calibration_images: optional images (e.g. the training set) over which the head is divided by the mean
                norm of the projected image feature, so the logits have the zero-shot logits' size on average (the
                plain `s * T @ P` multiplies them by `|P x|`, often large enough to saturate the softmax and stall
                fine-tuning). A positive scale: predictions are unchanged.
            config_overrides: other fields of the classification config (e.g. `drop_path_rate`, `problem_type`).

        At step 0 the predictions equal `zero_shot_classification`'s on the same images (the logits are the
        zero-shot ones scaled by the norm of each image's projected feature).
        """
        from .zero_shot_florence import load_templates, zero_shot_classifier
        from .modeling_florence import FlorenceModel

        names = check_class_names(class_names)
        if isinstance(florence_model_or_folder, FlorenceModel):
            florence = florence_model_or_folder
        else:
            florence = FlorenceModel.from_pretrained(florence_model_or_folder)
            if processor is None:
                from transformers import AutoProcessor

                try:
                    processor = AutoProcessor.from_pretrained(florence_model_or_folder)
                except (OSError, ValueError):  # a folder saved without its processor: the tokenizer is shipped
                    processor = None
        if processor is None:
            from .processing_florence import FlorenceProcessor

            processor = FlorenceProcessor.from_defaults(image_size=florence.config.vision_config.image_size)
        if templates is None or isinstance(templates, str):
            templates = load_templates(templates)

        id2label = dict(enumerate(names))
        config_dict = {
            **florence.config.vision_config.to_dict(),
            "id2label": id2label,
            "label2id": {name: index for index, name in id2label.items()},
            **config_overrides,
        }
        config = FlorenceVisionConfig.from_dict(config_dict)
        model = cls(config)
        model.vision_model.load_state_dict(florence.vision_model.state_dict())

        was_training = florence.training
        florence.eval()
        text_classifier = zero_shot_classifier(florence, processor, names, templates)  # (classes, D), normalised
        florence.train(was_training)
        with torch.no_grad():
            projection = florence.visual_projection.weight.float()  # (D, hidden)
            weight = florence.temperature().float() * text_classifier.to(projection.device) @ projection
            if calibration_images is not None:
                weight = weight / _mean_feature_norm(florence, processor, calibration_images)
            model.classifier.weight.copy_(weight.to(model.classifier.weight.dtype))
            model.classifier.bias.zero_()
        return model.to(next(florence.parameters()).device)


@torch.no_grad()
def _mean_feature_norm(florence, processor, images, batch_size: int = 256) -> float:
    """Mean norm of the projected (unnormalised) image features of `images`."""
    device, dtype = next(florence.parameters()).device, next(florence.parameters()).dtype
    norms = []
    for start in range(0, len(images), batch_size):
        pixel_values = processor(images=list(images[start : start + batch_size]))["pixel_values"]
        norms.append(florence.get_image_features(pixel_values.to(device, dtype)).pooler_output.float().norm(dim=-1))
    return torch.cat(norms).mean().item()


__all__ = ["FlorenceForImageClassification", "check_class_names"]
