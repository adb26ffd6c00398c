"""METER (Swin + RoBERTa) -> FlorenceForVQA conversion, on a checkpoint the test builds with METER's key names and
shapes from independent modules: timm's Swin (`vit_model.*`), Transformers' RobertaModel (`text_transformer.*`),
BridgeTower's cross-modal layer (METER's BertCrossLayer, same names: `cross_modal_*_layers.N.*`) and METER's heads.
The converted model's logits equal METER's forward computed from those modules."""

import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from transformers import BridgeTowerTextConfig, RobertaConfig, RobertaModel
from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerBertCrossLayer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conversion.convert_meter import convert_meter, main  # noqa: E402

HIDDEN, LAYERS, ANSWERS = 128, 2, 7  # widths of 64 per head, as METER (the converter reads heads = width / 64)


def randomize_(module: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return module


class MeterReference(nn.Module):
    """METER's VQA forward (meter_module.py), from independent modules, with METER's attribute names."""

    def __init__(self):
        super().__init__()
        self.vit_model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, embed_dim=16,
                                           depths=(2, 2), num_heads=(1, 2), window_size=4, img_size=32,
                                           num_classes=0)
        self.text_transformer = RobertaModel(RobertaConfig(
            vocab_size=120, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
            max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
        ))
        self.cross_modal_text_transform = nn.Linear(128, HIDDEN)
        self.cross_modal_image_transform = nn.Linear(32, HIDDEN)  # Swin width 16 * 2
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        cross = BridgeTowerTextConfig(hidden_size=HIDDEN, num_attention_heads=HIDDEN // 64, intermediate_size=96,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        cross._attn_implementation = "eager"
        self.cross_modal_text_layers = nn.ModuleList(BridgeTowerBertCrossLayer(cross) for _ in range(LAYERS))
        self.cross_modal_image_layers = nn.ModuleList(BridgeTowerBertCrossLayer(cross) for _ in range(LAYERS))
        self.cross_modal_text_pooler = nn.Module()
        self.cross_modal_text_pooler.dense = nn.Linear(HIDDEN, HIDDEN)
        self.cross_modal_image_pooler = nn.Module()
        self.cross_modal_image_pooler.dense = nn.Linear(HIDDEN, HIDDEN)
        self.vqa_classifier = nn.Sequential(nn.Linear(2 * HIDDEN, 2 * HIDDEN), nn.LayerNorm(2 * HIDDEN), nn.GELU(),
                                            nn.Linear(2 * HIDDEN, ANSWERS))
        self.itm_score = nn.Module()
        self.itm_score.fc = nn.Linear(2 * HIDDEN, 2)

    def forward(self, pixel_values, input_ids, attention_mask):
        text = self.text_transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        text = self.cross_modal_text_transform(text) + self.token_type_embeddings.weight[0]
        image = self.vit_model.forward_features(pixel_values).flatten(1, 2)
        image = torch.cat([image.mean(1, keepdim=True), image], dim=1)
        image = self.cross_modal_image_transform(image) + self.token_type_embeddings.weight[1]
        text_mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for text_layer, image_layer in zip(self.cross_modal_text_layers, self.cross_modal_image_layers):
            text, image = (text_layer(text, image, attention_mask=text_mask)[0],
                           image_layer(image, text, encoder_attention_mask=text_mask)[0])
        pooled = torch.cat([torch.tanh(self.cross_modal_text_pooler.dense(text[:, 0])),
                            torch.tanh(self.cross_modal_image_pooler.dense(image[:, 0]))], dim=-1)
        return self.vqa_classifier(pooled)


@pytest.fixture(scope="module")
def meter():
    torch.manual_seed(0)
    return randomize_(MeterReference()).eval()


def inputs():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 120, (2, 6), generator=generator)
    ids[:, 0] = 0
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    ids[1, 4:] = 1
    return torch.randn(2, 3, 32, 32, generator=generator), ids, mask


def test_meter_swin_roberta_checkpoint_converts_exactly(meter, tmp_path):
    state = {k: v for k, v in meter.state_dict().items() if not k.startswith("vit_model.head")}
    state["mlm_score.transform.dense.weight"] = torch.randn(HIDDEN, HIDDEN)  # pretraining heads ride along
    path = tmp_path / "meter.ckpt"
    torch.save({"state_dict": state}, path)
    model, dropped = convert_meter(path, id2label={i: f"a{i}" for i in range(ANSWERS)}, image_size=32)
    assert type(model).__name__ == "FlorenceForVQA" and dropped == ["itm_head.bias", "itm_head.weight", "mlm_head.dense.weight"]
    config = model.config
    assert (config.hidden_size, config.num_fusion_layers, config.num_labels) == (HIDDEN, LAYERS, ANSWERS)
    assert config.vision_config.patch_embed == "linear" and config.text_config.model_type == "roberta"
    pixel_values, ids, mask = inputs()
    with torch.no_grad():
        expected = meter(pixel_values, ids, mask)
        logits = model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)

    assert main(["--checkpoint", str(path), "--output", str(tmp_path / "out"), "--image-size", "32"]) == 0
    reloaded = type(model).from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixel_values, input_ids=ids, attention_mask=mask).logits,
                                   expected, atol=1e-5, rtol=1e-4)


def test_pretraining_checkpoint_becomes_the_pretraining_model(meter):
    state = {k: v for k, v in meter.state_dict().items()
             if not k.startswith(("vit_model.head", "vqa_classifier"))}
    state.update({
        "mlm_score.transform.dense.weight": torch.randn(HIDDEN, HIDDEN), "mlm_score.transform.dense.bias": torch.zeros(HIDDEN),
        "mlm_score.transform.LayerNorm.weight": torch.ones(HIDDEN), "mlm_score.transform.LayerNorm.bias": torch.zeros(HIDDEN),
        "mlm_score.decoder.weight": torch.randn(120, HIDDEN), "mlm_score.bias": torch.zeros(120),
    })
    model, dropped = convert_meter(state, image_size=32)
    assert type(model).__name__ == "FlorenceForVisionLanguagePretraining" and not dropped
    torch.testing.assert_close(model.itm_head.weight, meter.itm_score.fc.weight)
    torch.testing.assert_close(model.mlm_head.decoder.weight, state["mlm_score.decoder.weight"])


def test_clip_variant_and_foreign_checkpoints_are_refused(meter):
    clip_like = {"vit_model.visual.conv1.weight": torch.zeros(768, 3, 16, 16),
                 "vit_model.visual.class_embedding": torch.zeros(768), "text_transformer.encoder.layer.0.x": torch.zeros(1)}
    with pytest.raises(ValueError, match="CLIP-ViT variant"):
        convert_meter(clip_like)
    with pytest.raises(ValueError, match="Not a METER Swin checkpoint"):
        convert_meter({"encoder.layer.0.weight": torch.zeros(1)})
    state = dict(meter.state_dict())
    state["something_else.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="Unknown METER weight something_else.weight"):
        convert_meter(state)
    with pytest.raises(ValueError, match="answer list has 2 answers"):
        convert_meter({k: v for k, v in meter.state_dict().items() if not k.startswith("vit_model.head")},
                      id2label={0: "a", 1: "b"})


def vqa_state(meter):
    return {k: v for k, v in meter.state_dict().items() if not k.startswith("vit_model.head")}


def test_an_existing_file_as_output_is_refused(meter, tmp_path):
    torch.save({"state_dict": vqa_state(meter)}, tmp_path / "meter.ckpt")
    (tmp_path / "taken").write_text("a file where the output folder should go")
    with pytest.raises(SystemExit, match="nothing was written") as exited:
        main(["--checkpoint", str(tmp_path / "meter.ckpt"), "--output", str(tmp_path / "taken"), "--image-size", "32"])
    assert exited.value.code != 0


def test_the_converted_folder_carries_a_model_card(meter, tmp_path):
    from huggingface_hub import ModelCard

    torch.save({"state_dict": vqa_state(meter)}, tmp_path / "meter.ckpt")
    assert main(["--checkpoint", str(tmp_path / "meter.ckpt"), "--output", str(tmp_path / "out"),
                 "--image-size", "32"]) == 0
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == "meter.ckpt" and card.data.pipeline_tag == "visual-question-answering"


def test_meter_hyper_parameters_are_checked(meter, tmp_path, capsys):
    """A checkpoint missing its last fusion layer converts into a shallower model unless its config says so."""
    short = {k: v for k, v in vqa_state(meter).items() if f"_layers.{LAYERS - 1}." not in k}
    config = {"num_top_layer": LAYERS, "hidden_size": HIDDEN, "vqav2_label_size": ANSWERS,
              "vit": "swin_tiny_patch4_window7_224", "tokenizer": "roberta-base"}
    torch.save({"state_dict": short, "hyper_parameters": {"config": config}}, tmp_path / "short.ckpt")
    with pytest.raises(ValueError, match=rf"Inconsistent num_fusion_layers: .* give {LAYERS - 1} but .*short\.ckpt's "
                                         rf"metadata declares {LAYERS}"):
        convert_meter(tmp_path / "short.ckpt", image_size=32)
    assert f"num_fusion_layers={LAYERS - 1}" in capsys.readouterr().out
    # The Swin size its `vit` name states is checked too (this test's tower is narrower than Swin-T).
    torch.save({"state_dict": vqa_state(meter), "hyper_parameters": {"config": config}}, tmp_path / "full.ckpt")
    with pytest.raises(ValueError, match=r"Inconsistent vision embed_dim: .* give 16 but .* declares 96"):
        convert_meter(tmp_path / "full.ckpt", image_size=32)
    with pytest.raises(SystemExit, match=r"Inconsistent vision depths \[2, 1\]: Swin blocks come in pairs"):
        torch.save({"state_dict": {k: v for k, v in vqa_state(meter).items() if "layers.1.blocks.1." not in k}},
                   tmp_path / "odd.ckpt")
        main(["--checkpoint", str(tmp_path / "odd.ckpt"), "--output", str(tmp_path / "o"), "--image-size", "32"])
