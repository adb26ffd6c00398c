"""Florence-2 fine-tuning pieces: the token-table init, labels and their padding, the model on a pretrained CoSwin
tower, per-task scoring of generated text, and examples/finetune_generation.py end to end (full and LoRA, then
`--eval-only` on the saved folder, which the image-text-to-text pipeline serves)."""

import json

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

import modeling_florence as mf
from modeling_florence.shapes import SHAPES, build_florence2
from modeling_florence.training_florence_generation import (
    GenerationCollator,
    build_generation_model,
    location_embeddings,
    make_compute_metrics,
    target_ids,
)
from tests.test_common import tiny_text_config, tiny_vision_config

TEXT = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=96)


@pytest.fixture(scope="module")
def tokenizer():
    return mf.FlorenceGenerationTokenizer.from_defaults()


@pytest.fixture(scope="module")
def two_tower(tmp_path_factory):
    """A tiny 4-stage two-tower folder whose text width (16) is the encoder-decoder's d_model."""
    folder = tmp_path_factory.mktemp("two-tower")
    torch.manual_seed(0)
    vision = tiny_vision_config(depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4]).to_dict()
    text = tiny_text_config(hidden_size=16, intermediate_size=32, num_attention_heads=2).to_dict()
    mf.FlorenceModel(mf.FlorenceConfig(vision_config=vision, text_config=text, projection_dim=16)).save_pretrained(
        folder)
    return folder


@pytest.fixture(scope="module")
def rows():
    return build_florence2(num_train=14, num_validation=0, num_test=0, image_size=48, seed=2)["train"]


def test_location_rows_are_close_for_neighbouring_bins_and_apart_for_distant_ones():
    table = location_embeddings(1000, 128, std=0.02)
    cosine = torch.nn.functional.cosine_similarity
    near, far = cosine(table[500], table[501], dim=0), cosine(table[500], table[900], dim=0)
    assert near > 0.95 and far < 0.5 and table.std().item() == pytest.approx(0.02, rel=0.1)
    assert location_embeddings(10, 7, std=1.0).shape == (10, 7)  # odd widths padded


def test_a_model_on_a_two_tower_copies_its_tower_and_token_table(two_tower, tokenizer):
    model = build_generation_model(two_tower, tokenizer, text_config=TEXT, vision_feature_stages=[3, 4])
    florence = mf.FlorenceModel.from_pretrained(two_tower)
    for name, value in florence.vision_model.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], value), name
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    words = florence.text_model.get_input_embeddings().weight
    table = model.get_input_embeddings().weight
    assert torch.allclose(table[: len(words)] / table[: len(words)].std(), words / words.std(), atol=1e-5)
    location = tokenizer.convert_tokens_to_ids("<loc_0>")
    assert torch.equal(table[location : location + 1000], location_embeddings(1000, 16, 0.02))
    assert model.lm_head.weight.data_ptr() == table.data_ptr()  # tied
    trainable = build_generation_model(two_tower, tokenizer, text_config=TEXT, freeze_vision_tower=False)
    assert all(p.requires_grad for p in trainable.model.vision_tower.parameters())


def test_labels_are_bos_target_eos_padded_with_minus_100(rows, tokenizer):
    processor = mf.FlorenceGenerationProcessor.from_defaults(image_size=48, image_seq_length=5)
    batch = GenerationCollator(processor, max_target_length=64)(list(rows.select(range(7))))
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels"}
    for row, labels in zip(rows.select(range(7)), batch["labels"]):
        ids = labels[labels != -100].tolist()
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert (labels == -100).nonzero().numel() == 0 or (labels[labels.tolist().index(-100):] == -100).all()
        assert tokenizer.decode(ids[1:-1]).replace(" ", "") == row["target"].replace(" ", "")
        locations = row["target"].count("<loc_")
        assert sum(i in tokenizer.convert_tokens_to_ids([f"<loc_{k}>" for k in range(1000)]) for i in ids) == locations
    with pytest.raises(ValueError, match="row 3: the target is .* tokens but the decoder writes at most 4"):
        target_ids(tokenizer, "a red circle and a blue square", limit=4, row=3)


def test_generated_targets_score_perfectly_and_wrong_ones_do_not(rows, tokenizer):
    """`compute_metrics` parses each generated sequence for its row's task and scores every task: the targets
    themselves (as generate() returns them: decoder start, bos, ..., eos, padding) score 1 on every metric."""
    processor = mf.FlorenceGenerationProcessor.from_defaults(image_size=48, image_seq_length=5)
    sequences = [[tokenizer.eos_token_id] + target_ids(tokenizer, t, 10**6) for t in rows["target"]]
    width = max(map(len, sequences))
    padded = np.array([s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences])
    metrics = make_compute_metrics(rows, processor, list(SHAPES))(EvalPrediction(padded, None))
    for name in ("od_AP50", "caption_to_phrase_grounding_accuracy", "referring_expression_segmentation_miou",
                 "region_to_category_accuracy", "caption_exact_match", "detailed_caption_exact_match",
                 "vqa_accuracy", "vqa_anls"):
        assert metrics[name] == pytest.approx(1.0), name
    wrong = np.full_like(padded, tokenizer.pad_token_id)
    wrong[:, :3] = [tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]
    metrics = make_compute_metrics(rows, processor, list(SHAPES))(EvalPrediction(wrong, None))
    assert metrics["od_AP50"] == 0 and metrics["caption_exact_match"] == 0 and metrics["vqa_accuracy"] == 0


@pytest.mark.parametrize("lora", [False, True])
def test_finetune_script_trains_evaluates_saves_and_serves(two_tower, tmp_path, lora):
    from PIL import Image
    from transformers import pipeline

    from tests.conftest import run_example

    output = tmp_path / "generation"
    common = ["--num-train", "14", "--num-test", "7", "--image-size", "48", "--batch-size", "7",
              "--max-new-tokens", "8", "--vision-feature-stages", "3", "4"]
    if lora:  # LoRA on a trained folder (a model of ours saved first)
        model = build_generation_model(two_tower, mf.FlorenceGenerationTokenizer.from_defaults(), text_config=TEXT)
        model.save_pretrained(tmp_path / "start")
        mf.FlorenceGenerationProcessor.from_defaults(
            image_size=48, image_seq_length=model.num_image_tokens(48, 48)).save_pretrained(tmp_path / "start")
        run_example("finetune_generation.py", "--model", str(tmp_path / "start"), "--lora", "--steps", "2",
                    "--output", str(output), *common)
        assert (output / "adapter" / "adapter_config.json").is_file()
    else:
        run_example("finetune_generation.py", "--base", str(two_tower), "--steps", "2", "--output", str(output),
                    *common)
    results = json.loads((output / "eval_results.json").read_text())
    assert {"od_AP50", "caption_cider", "vqa_anls", "referring_expression_segmentation_miou"} <= set(
        results["generation"])
    assert "od_AP50" in (output / "README.md").read_text()
    if lora:
        return
    again = run_example("finetune_generation.py", "--model", str(output), "--eval-only", "--num-test", "7",
                        "--image-size", "48", "--max-new-tokens", "8", "--output", str(tmp_path / "eval"))
    assert "held-out Florence-2 tasks" in again.stdout
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert evaluated["generation"] == pytest.approx(results["generation"]) and evaluated["train_seconds"] < 1
    served = pipeline("image-text-to-text", model=str(output))
    (result,) = served(images=Image.new("RGB", (48, 48), "red"), text="<OD>", max_new_tokens=4)
    assert result["input_text"] == "<OD>"
