"""UniCL conversion: a checkpoint in UniCL's layout converts into a FlorenceModel whose logits equal a reference
forward written here from UniCL's published model structure (model/model.py, text_encoder/transformer.py)."""

import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from modeling_florence import FlorenceModel, FlorenceProcessor

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from conversion.convert_unicl import main as convert_main  # noqa: E402

WIDTH, HEADS, LAYERS, CONTEXT, PROJECTION = 128, 2, 2, 77, 48


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class UniCLBlock(nn.Module):
    """UniCL's text ResidualAttentionBlock: pre-LN (eps 1e-12) nn.MultiheadAttention and a QuickGELU MLP."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(WIDTH, HEADS)
        self.ln_1 = nn.LayerNorm(WIDTH, eps=1e-12)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(WIDTH, 4 * WIDTH), gelu=QuickGELU(),
                                             c_proj=nn.Linear(4 * WIDTH, WIDTH)))
        self.ln_2 = nn.LayerNorm(WIDTH, eps=1e-12)

    def forward(self, x, mask):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class UniCLText(nn.Module):
    """UniCL's text Transformer: token + positional embedding, causal blocks, ln_final, pooled at argmax(ids)."""

    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(49408, WIDTH)
        self.positional_embedding = nn.Parameter(torch.randn(CONTEXT, WIDTH) * 0.01)
        self.resblocks = nn.ModuleList(UniCLBlock() for _ in range(LAYERS))
        self.ln_final = nn.LayerNorm(WIDTH, eps=1e-12)

    def forward(self, input_ids):
        length = input_ids.shape[1]
        x = (self.token_embedding(input_ids) + self.positional_embedding[:length]).permute(1, 0, 2)
        mask = torch.full((length, length), float("-inf")).triu_(1)
        for block in self.resblocks:
            x = block(x, mask)
        x = self.ln_final(x.permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)]


class UniCLReference(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, img_size=64, embed_dim=32,
            depths=(2, 2), num_heads=(1, 2), window_size=4,
        )
        self.text_encoder = UniCLText()
        dim_image = 32 * 2
        self.image_projection = nn.Parameter(torch.randn(dim_image, PROJECTION) * 0.02)
        self.text_projection = nn.Parameter(torch.randn(WIDTH, PROJECTION) * 0.02)
        self.logit_scale = nn.Parameter(torch.tensor(1.3))

    def forward(self, pixel_values, input_ids):
        u = nn.functional.normalize(self.image_encoder(pixel_values) @ self.image_projection, dim=-1)
        v = nn.functional.normalize(self.text_encoder(input_ids) @ self.text_projection, dim=-1)
        return self.logit_scale.exp() * u @ v.t()

    def unicl_state_dict(self) -> dict:
        """The released layout: official Swin names (downsampling at the END of stages 0..2, timm has it at the start
        of 1..3), `attn_mask` / `relative_position_index` buffers kept, everything under the UniCLModel attributes."""
        state = {}
        for key, value in self.state_dict().items():
            if key.startswith("image_encoder.layers."):
                parts = key.split(".")
                if parts[3] == "downsample":
                    parts[2] = str(int(parts[2]) - 1)
                key = ".".join(parts)
            state[key] = value
        return state


class NotWeights:
    """An arbitrary pickled object: `weights_only=True` must refuse the file."""


@pytest.fixture(scope="module")
def unicl(tmp_path_factory):
    torch.manual_seed(0)
    reference = UniCLReference().eval()
    folder = tmp_path_factory.mktemp("unicl")
    torch.save({"model": reference.unicl_state_dict(), "epoch": 30}, folder / "unicl.pth")
    return reference, folder


def test_converted_unicl_matches_the_reference_forward(unicl, tmp_path):
    reference, folder = unicl
    assert convert_main(["--checkpoint", str(folder / "unicl.pth"), "--output", str(tmp_path / "out"),
                         "--image-size", "64"]) == 0
    model = FlorenceModel.from_pretrained(tmp_path / "out").eval()
    processor = FlorenceProcessor.from_pretrained(tmp_path / "out")
    assert model.config.text_config.layer_norm_eps == 1e-12 and model.config.text_config.hidden_act == "quick_gelu"
    assert model.config.vision_config.patch_embed == "linear" and model.config.vision_config.downsample == "merge"

    texts = ["a photo of a red circle", "a blue star", "two small green squares on a striped background"]
    inputs = processor(text=texts, padding="max_length", max_length=CONTEXT)
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(pixel_values, inputs["input_ids"])
        ours = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     pixel_values=pixel_values).logits_per_image
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "base_model: microsoft/UniCL (unicl.pth)" in card


def test_unicl_conversion_refuses_other_files(unicl, tmp_path):
    reference, folder = unicl
    state = reference.unicl_state_dict()

    torch.save({"model": state, "trainer": NotWeights()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights_only"):
        convert_main(["--checkpoint", str(tmp_path / "pickled.pth"), "--output", str(tmp_path / "a")])
    torch.save({k: v for k, v in state.items() if not k.startswith("text_encoder.")}, tmp_path / "vision_only.pth")
    with pytest.raises(ValueError, match=r"Not a UniCL checkpoint: missing \['text_encoder\.\*'\]"):
        convert_main(["--checkpoint", str(tmp_path / "vision_only.pth"), "--output", str(tmp_path / "b")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_unicl_checkpoint_missing_its_last_block_or_layer_is_refused(unicl, tmp_path, capsys):
    reference, folder = unicl
    state = reference.unicl_state_dict()
    odd = {k: v for k, v in state.items() if not k.startswith("image_encoder.layers.1.blocks.1.")}
    torch.save({"model": odd}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"Inconsistent vision depths \[2, 1\]: Swin blocks come in pairs"):
        convert_main(["--checkpoint", str(tmp_path / "odd.pth"), "--output", str(tmp_path / "a")])
    assert "UniCL architecture read from the weights: vision embed_dim=32" in capsys.readouterr().out
    # UniCL's own config (MODEL.TEXT_ENCODER.LAYERS) states the text depth: a missing last layer is refused.
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("text_encoder.resblocks."))
    short = {k: v for k, v in state.items() if not k.startswith(f"text_encoder.resblocks.{layers - 1}.")}
    config = {"MODEL": {"TEXT_ENCODER": {"LAYERS": layers}, "IMAGE_ENCODER": {"SPEC": {"DEPTHS": [2, 2]}}}}
    torch.save({"model": short, "config": config}, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=rf"Inconsistent text num_hidden_layers: .* give {layers - 1} but .*declares "
                                         rf"{layers}"):
        convert_main(["--checkpoint", str(tmp_path / "short.pth"), "--output", str(tmp_path / "b")])
    with pytest.raises(ValueError, match=r"Inconsistent vision embed_dim: .* give 32 but --config declares 96"):
        convert_main(["--checkpoint", str(folder / "unicl.pth"), "--output", str(tmp_path / "c"),
                      "--config", "swin-t"])
