"""DyHead (detectron2 / microsoft/DynamicHead and mmdetection layouts) -> FlorenceForObjectDetection conversion.

The fake checkpoints are written from the two layouts' own key names and shapes (not from our model), with random
values. Checks: every source tensor lands in the model and every model tensor comes from the source; spot checks of
where; a converted DyHead block equals the from-the-paper reference of `test_detection` computed straight from the
source tensors; mmdet's unfold-ordered patch merging; refusals naming unknown, missing and unrepresentable weights."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conversion.convert_dyhead import convert_dyhead, main  # noqa: E402
from modeling_florence import FlorenceForObjectDetection  # noqa: E402
from modeling_florence.modeling_florence_detection import crop_offsets, flatten_offsets  # noqa: E402
from florence_testing import reference_dyhead_block  # noqa: E402

EMBED, DEPTHS, HEADS, WINDOW = 16, (2, 2, 2, 2), (1, 2, 2, 4), 4  # Swin blocks come in pairs
FPN, BLOCKS, CLASSES = 32, 2, 3
OUT_STAGES = (1, 2, 3)  # Swin stages (0-based) feeding the FPN: strides 8, 16, 32
# The Swin names of each layout: official Swin (detectron2 DynamicHead) and mmdetection's.
SWIN_NAMES = {
    "detectron2": dict(embed="patch_embed.proj", stage="layers", attn="attn", fc1="mlp.fc1", fc2="mlp.fc2"),
    "mmdet": dict(embed="patch_embed.projection", stage="stages", attn="attn.w_msa", fc1="ffn.layers.0.0",
                  fc2="ffn.layers.1"),
}


def swin_shapes(layout: str) -> dict[str, tuple]:
    """A tiny Swin detection backbone: merging at the end of stages 0-2, one output norm per used stage."""
    names = SWIN_NAMES[layout]
    shapes = {f"{names['embed']}.weight": (EMBED, 3, 4, 4), f"{names['embed']}.bias": (EMBED,),
              "patch_embed.norm.weight": (EMBED,), "patch_embed.norm.bias": (EMBED,)}
    for stage, (depth, heads) in enumerate(zip(DEPTHS, HEADS)):
        dim = EMBED * 2**stage
        for block in range(depth):
            prefix, attn = f"{names['stage']}.{stage}.blocks.{block}.", names["attn"]
            shapes.update({
                prefix + "norm1.weight": (dim,), prefix + "norm1.bias": (dim,),
                f"{prefix}{attn}.relative_position_bias_table": ((2 * WINDOW - 1) ** 2, heads),
                f"{prefix}{attn}.relative_position_index": (WINDOW**2, WINDOW**2),
                f"{prefix}{attn}.qkv.weight": (3 * dim, dim), f"{prefix}{attn}.qkv.bias": (3 * dim,),
                f"{prefix}{attn}.proj.weight": (dim, dim), f"{prefix}{attn}.proj.bias": (dim,),
                prefix + "norm2.weight": (dim,), prefix + "norm2.bias": (dim,),
                f"{prefix}{names['fc1']}.weight": (4 * dim, dim), f"{prefix}{names['fc1']}.bias": (4 * dim,),
                f"{prefix}{names['fc2']}.weight": (dim, 4 * dim), f"{prefix}{names['fc2']}.bias": (dim,),
            })
        if stage < len(DEPTHS) - 1:
            prefix = f"{names['stage']}.{stage}.downsample."
            shapes.update({prefix + "norm.weight": (4 * dim,), prefix + "norm.bias": (4 * dim,),
                           prefix + "reduction.weight": (2 * dim, 4 * dim)})
    for stage in OUT_STAGES:
        shapes.update({f"norm{stage}.weight": (EMBED * 2**stage,), f"norm{stage}.bias": (EMBED * 2**stage,)})
    return shapes


def detectron2_shapes() -> dict[str, tuple]:
    """microsoft/DynamicHead: ATSS(backbone=DyHead(backbone=FPN(bottom_up=Swin)), head=ATSSHead)."""
    shapes = {f"backbone.backbone.bottom_up.{k}": v for k, v in swin_shapes("detectron2").items()}
    for level, stage in zip((3, 4, 5), OUT_STAGES):
        shapes.update({f"backbone.backbone.fpn_lateral{level}.weight": (FPN, EMBED * 2**stage, 1, 1),
                       f"backbone.backbone.fpn_lateral{level}.bias": (FPN,),
                       f"backbone.backbone.fpn_output{level}.weight": (FPN, FPN, 3, 3),
                       f"backbone.backbone.fpn_output{level}.bias": (FPN,)})
    for extra in ("p6", "p7"):
        shapes.update({f"backbone.backbone.top_block.{extra}.weight": (FPN, FPN, 3, 3),
                       f"backbone.backbone.top_block.{extra}.bias": (FPN,)})
    for block in range(BLOCKS):
        prefix = f"backbone.dyhead_tower.{block}."
        for branch in range(3):
            shapes.update({f"{prefix}DyConv.{branch}.conv.weight": (FPN, FPN, 3, 3),
                           f"{prefix}DyConv.{branch}.conv.bias": (FPN,),
                           f"{prefix}DyConv.{branch}.bn.weight": (FPN,), f"{prefix}DyConv.{branch}.bn.bias": (FPN,)})
        shapes.update({prefix + "AttnConv.1.weight": (1, FPN, 1, 1), prefix + "AttnConv.1.bias": (1,),
                       prefix + "relu.fc.0.weight": (FPN // 4, FPN), prefix + "relu.fc.0.bias": (FPN // 4,),
                       prefix + "relu.fc.2.weight": (4 * FPN, FPN // 4), prefix + "relu.fc.2.bias": (4 * FPN,),
                       prefix + "offset.weight": (27, FPN, 3, 3), prefix + "offset.bias": (27,)})
    shapes.update({"head.cls_logits.weight": (CLASSES, FPN, 1, 1), "head.cls_logits.bias": (CLASSES,),
                   "head.bbox_pred.weight": (4, FPN, 1, 1), "head.bbox_pred.bias": (4,),
                   "head.centerness.weight": (1, FPN, 1, 1), "head.centerness.bias": (1,)})
    shapes.update({f"head.scales.{level}.scale": (1,) for level in range(5)})
    return shapes


def mmdet_shapes() -> dict[str, tuple]:
    """mmdetection: ATSS(backbone=SwinTransformer, neck=[FPN(on_output), DyHead], bbox_head=ATSSHead)."""
    shapes = {f"backbone.{k}": v for k, v in swin_shapes("mmdet").items()}
    for index, stage in enumerate(OUT_STAGES):
        shapes.update({f"neck.0.lateral_convs.{index}.conv.weight": (FPN, EMBED * 2**stage, 1, 1),
                       f"neck.0.lateral_convs.{index}.conv.bias": (FPN,)})
    for index in range(5):  # 3 outputs, then P6 and P7
        shapes.update({f"neck.0.fpn_convs.{index}.conv.weight": (FPN, FPN, 3, 3),
                       f"neck.0.fpn_convs.{index}.conv.bias": (FPN,)})
    for block in range(BLOCKS):
        prefix = f"neck.1.dyhead_blocks.{block}."
        for branch in ("high", "mid", "low"):
            shapes.update({f"{prefix}spatial_conv_{branch}.conv.weight": (FPN, FPN, 3, 3),
                           f"{prefix}spatial_conv_{branch}.norm.weight": (FPN,),
                           f"{prefix}spatial_conv_{branch}.norm.bias": (FPN,)})
        shapes.update({
            prefix + "spatial_conv_offset.weight": (27, FPN, 3, 3), prefix + "spatial_conv_offset.bias": (27,),
            prefix + "scale_attn_module.1.weight": (1, FPN, 1, 1), prefix + "scale_attn_module.1.bias": (1,),
            prefix + "task_attn_module.conv1.conv.weight": (FPN // 4, FPN, 1, 1),
            prefix + "task_attn_module.conv1.conv.bias": (FPN // 4,),
            prefix + "task_attn_module.conv2.conv.weight": (4 * FPN, FPN // 4, 1, 1),
            prefix + "task_attn_module.conv2.conv.bias": (4 * FPN,),
        })
    for name, out in (("atss_cls", CLASSES), ("atss_reg", 4), ("atss_centerness", 1)):
        shapes.update({f"bbox_head.{name}.weight": (out, FPN, 1, 1), f"bbox_head.{name}.bias": (out,)})
    shapes.update({f"bbox_head.scales.{level}.scale": () for level in range(5)})
    return shapes


def random_checkpoint(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {key: torch.zeros(shape, dtype=torch.long) if key.endswith("relative_position_index")
            else torch.randn(shape, generator=generator) * 0.3 for key, shape in shapes.items()}


@pytest.fixture(scope="module")
def detectron2_checkpoint():
    return random_checkpoint(detectron2_shapes())


@pytest.fixture(scope="module")
def mmdet_checkpoint():
    return random_checkpoint(mmdet_shapes())


def fingerprint(tensor: torch.Tensor) -> tuple:
    """The sorted values: equal for the same tensor whatever its shape or the order of its entries."""
    return tuple(tensor.detach().flatten().sort().values.tolist())


def assert_one_to_one(model, source: dict[str, torch.Tensor], generated=()):
    """Every source tensor (but Swin's index buffers) is in the model; every model tensor (but `generated`) is a
    source tensor."""
    model_prints = {name: fingerprint(value) for name, value in model.state_dict().items()}
    source_prints = {fingerprint(value) for key, value in source.items() if not key.endswith("position_index")}
    unplaced = set(source_prints) - set(model_prints.values())
    assert not unplaced, f"{len(unplaced)} source tensors are nowhere in the model"
    invented = [name for name, value in model_prints.items() if value not in source_prints and name not in generated]
    assert not invented, f"model tensors that come from no source tensor: {invented}"


def assert_runs(model):
    with torch.no_grad():
        output = model(pixel_values=torch.randn(1, 3, 64, 64))
    assert output.logits.shape == (1, 8 * 8 + 4 * 4 + 2 * 2 + 1 + 1, CLASSES)
    assert torch.isfinite(output.logits).all() and torch.isfinite(output.pred_boxes).all()


# ----------------------------------------------------------------------------------------------------------------------
# detectron2 (microsoft/DynamicHead)
# ----------------------------------------------------------------------------------------------------------------------
def test_detectron2_layout_converts_every_weight_through_the_cli(detectron2_checkpoint, tmp_path):
    path = tmp_path / "dyhead_swint_atss.pth"
    torch.save({"model": detectron2_checkpoint, "iteration": 90000}, path)  # detectron2's checkpointer wrapping
    (tmp_path / "labels.json").write_text('["cat", "dog", "bird"]')
    main(["--checkpoint", str(path), "--output", str(tmp_path / "out"), "--labels", str(tmp_path / "labels.json")])
    model = FlorenceForObjectDetection.from_pretrained(tmp_path / "out").eval()
    config = model.config
    assert config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert config.upsampled_offset_mode == "detectron2"
    assert config.relu_before_p7 is True
    assert (config.fpn_channels, config.num_dyhead_blocks, config.num_labels) == (FPN, BLOCKS, CLASSES)
    assert config.out_features == ["stage2", "stage3", "stage4"]
    vision = config.vision_config
    assert (vision.embed_dim, vision.depths, vision.num_heads, vision.window_size) == (EMBED, [2, 2, 2, 2],
                                                                                       [1, 2, 2, 4], WINDOW)
    assert (vision.patch_embed, vision.downsample) == ("linear", "merge")
    assert_one_to_one(model, detectron2_checkpoint)

    source, weights = detectron2_checkpoint, model.state_dict()
    for ours, theirs in [
        ("dyhead.1.spatial_conv_high.conv.weight", "backbone.dyhead_tower.1.DyConv.0.conv.weight"),
        ("dyhead.1.spatial_conv_mid.conv.bias", "backbone.dyhead_tower.1.DyConv.1.conv.bias"),
        ("dyhead.0.spatial_conv_low.norm.weight", "backbone.dyhead_tower.0.DyConv.2.bn.weight"),
        ("dyhead.0.scale_attention.conv.weight", "backbone.dyhead_tower.0.AttnConv.1.weight"),
        ("dyhead.1.task_attention.expand.weight", "backbone.dyhead_tower.1.relu.fc.2.weight"),
        ("dyhead.0.spatial_conv_offset.bias", "backbone.dyhead_tower.0.offset.bias"),
        ("fpn.lateral_convs.2.weight", "backbone.backbone.fpn_lateral5.weight"),
        ("fpn.output_convs.0.bias", "backbone.backbone.fpn_output3.bias"),
        ("fpn.p7.weight", "backbone.backbone.top_block.p7.weight"),
        ("hidden_states_norms.stage2.weight", "backbone.backbone.bottom_up.norm1.weight"),
        ("vision_model.layernorm.bias", "backbone.backbone.bottom_up.norm3.bias"),
        ("vision_model.stages.1.downsample.reduction.weight", "backbone.backbone.bottom_up.layers.0.downsample"
                                                              ".reduction.weight"),
        ("vision_model.stages.3.blocks.0.attn.qkv.weight", "backbone.backbone.bottom_up.layers.3.blocks.0.attn.qkv"
                                                           ".weight"),
        ("head.classifier.cls_logits.bias", "head.cls_logits.bias"),
        ("head.scales.3.scale", "head.scales.3.scale"),
    ]:
        torch.testing.assert_close(weights[ours], source[theirs].reshape(weights[ours].shape), msg=ours)
    assert_runs(model)


def source_block(source: dict[str, torch.Tensor], layout: str, index: int):
    """A DyHead block as the attributes `reference_dyhead_block` reads, taken from the source names."""
    def conv(name, bias=None):
        weight = source[name + ".weight"].double()
        return SimpleNamespace(weight=weight.flatten(1) if weight.ndim == 4 and "task_attn" in name else weight,
                               bias=source[name + ".bias"].double() if bias is None else bias)

    def branch(conv_name, norm_name):
        bias = None if conv_name + ".bias" in source else torch.zeros(FPN, dtype=torch.float64)
        norm = conv(norm_name)
        return SimpleNamespace(conv=conv(conv_name, bias), norm=SimpleNamespace(
            num_groups=16, eps=1e-5, weight=norm.weight, bias=norm.bias))

    if layout == "detectron2":
        prefix = f"backbone.dyhead_tower.{index}."
        return SimpleNamespace(
            spatial_conv_offset=conv(prefix + "offset"),
            **{f"spatial_conv_{name}": branch(f"{prefix}DyConv.{k}.conv", f"{prefix}DyConv.{k}.bn")
               for k, name in enumerate(("high", "mid", "low"))},
            scale_attention=SimpleNamespace(conv=conv(prefix + "AttnConv.1")),
            task_attention=SimpleNamespace(reduce=conv(prefix + "relu.fc.0"), expand=conv(prefix + "relu.fc.2")))
    prefix = f"neck.1.dyhead_blocks.{index}."
    return SimpleNamespace(
        spatial_conv_offset=conv(prefix + "spatial_conv_offset"),
        **{f"spatial_conv_{name}": branch(f"{prefix}spatial_conv_{name}.conv", f"{prefix}spatial_conv_{name}.norm")
           for name in ("high", "mid", "low")},
        scale_attention=SimpleNamespace(conv=conv(prefix + "scale_attn_module.1")),
        task_attention=SimpleNamespace(reduce=conv(prefix + "task_attn_module.conv1.conv"),
                                       expand=conv(prefix + "task_attn_module.conv2.conv")))


@pytest.mark.parametrize("layout", ["detectron2", "mmdet"])
def test_converted_block_matches_the_reference_on_the_source_weights(layout, detectron2_checkpoint, mmdet_checkpoint):
    source = detectron2_checkpoint if layout == "detectron2" else mmdet_checkpoint
    model = convert_dyhead(source).double()
    torch.manual_seed(0)
    features = [torch.randn(1, FPN, size, 4 * size // 3, dtype=torch.float64) for size in (12, 6, 3)]
    fit = {"detectron2": flatten_offsets, "mmdet": crop_offsets}[layout]
    with torch.no_grad():
        actual = model.dyhead[1](*features)
        expected = reference_dyhead_block(source_block(source, layout, 1), features, fit)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-9, rtol=1e-7)


# ----------------------------------------------------------------------------------------------------------------------
# mmdetection
# ----------------------------------------------------------------------------------------------------------------------
def test_mmdet_layout_converts_every_weight(mmdet_checkpoint, tmp_path):
    path = tmp_path / "atss_swin_dyhead.pth"
    torch.save({"state_dict": mmdet_checkpoint}, path)
    model = convert_dyhead(path, "mmdet")
    assert model.config.upsampled_offset_mode == "mmdet"
    assert model.config.relu_before_p7 is False
    # mmdet's extra level (add_extra_convs="on_output", relu_before_extra_convs=False): P7 = conv(P6), no ReLU
    widths = [model.fpn.lateral_convs[i].in_channels for i in range(3)]
    with torch.no_grad():
        levels = model.fpn([torch.randn(1, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate(widths)])
    weight, bias = (mmdet_checkpoint[f"neck.0.fpn_convs.4.conv.{leaf}"] for leaf in ("weight", "bias"))
    torch.testing.assert_close(levels[-1], F.conv2d(levels[-2], weight, bias, stride=2, padding=1))
    assert (model.config.fpn_channels, model.config.num_dyhead_blocks, model.config.num_labels) == (FPN, BLOCKS,
                                                                                                     CLASSES)
    zero_biases = [f"dyhead.{block}.spatial_conv_{name}.conv.bias"
                   for block in range(BLOCKS) for name in ("high", "mid", "low")]
    assert_one_to_one(model, mmdet_checkpoint, generated=zero_biases)
    weights, source = model.state_dict(), mmdet_checkpoint
    for name in zero_biases:
        assert not weights[name].any()
    for ours, theirs in [
        ("dyhead.1.spatial_conv_low.conv.weight", "neck.1.dyhead_blocks.1.spatial_conv_low.conv.weight"),
        ("dyhead.0.spatial_conv_high.norm.bias", "neck.1.dyhead_blocks.0.spatial_conv_high.norm.bias"),
        ("dyhead.1.scale_attention.conv.bias", "neck.1.dyhead_blocks.1.scale_attn_module.1.bias"),
        ("dyhead.0.task_attention.reduce.bias", "neck.1.dyhead_blocks.0.task_attn_module.conv1.conv.bias"),
        ("fpn.lateral_convs.1.weight", "neck.0.lateral_convs.1.conv.weight"),
        ("fpn.output_convs.2.weight", "neck.0.fpn_convs.2.conv.weight"),
        ("fpn.p6.bias", "neck.0.fpn_convs.3.conv.bias"),
        ("fpn.p7.weight", "neck.0.fpn_convs.4.conv.weight"),
        ("hidden_states_norms.stage4.bias", "backbone.norm3.bias"),
        ("vision_model.embeddings.projection.weight", "backbone.patch_embed.projection.weight"),
        ("vision_model.stages.2.blocks.0.mlp.fc1.weight", "backbone.stages.2.blocks.0.ffn.layers.0.0.weight"),
        ("vision_model.stages.0.blocks.0.attn.relative_position_bias_table",
         "backbone.stages.0.blocks.0.attn.w_msa.relative_position_bias_table"),
        ("head.bbox_pred.weight", "bbox_head.atss_reg.weight"),
        ("head.scales.4.scale", "bbox_head.scales.4.scale"),
    ]:
        torch.testing.assert_close(weights[ours], source[theirs], msg=ours)
    torch.testing.assert_close(weights["dyhead.1.task_attention.expand.weight"],
                               source["neck.1.dyhead_blocks.1.task_attn_module.conv2.conv.weight"][:, :, 0, 0])
    assert_runs(model)


def test_mmdet_unfold_patch_merging_is_reordered(mmdet_checkpoint):
    """mmdet merges 2x2 patches with nn.Unfold (channel-major); the converted Swin-order merge gives the same."""
    model = convert_dyhead(mmdet_checkpoint)
    prefix, dim = "backbone.stages.1.downsample.", 2 * EMBED
    x = torch.randn(2, 6, 4, dim)
    unfolded = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # mmdet's PatchMerging
    normed = F.layer_norm(unfolded, (4 * dim,), mmdet_checkpoint[prefix + "norm.weight"],
                          mmdet_checkpoint[prefix + "norm.bias"])
    expected = (normed @ mmdet_checkpoint[prefix + "reduction.weight"].T).reshape(2, 3, 2, 2 * dim)
    with torch.no_grad():
        torch.testing.assert_close(model.vision_model.stages[2].downsample(x), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", ["backbone.dyhead_tower.0.AttnConv.2.weight", "head.cls_tower.0.weight",
                                   "backbone.backbone.bottom_up.absolute_pos_embed"])
def test_left_over_weights_are_named(detectron2_checkpoint, extra):
    with pytest.raises(ValueError, match=extra.split("bottom_up.")[-1].replace(".", r"\.")):
        convert_dyhead({**detectron2_checkpoint, extra: torch.zeros(3)})


@pytest.mark.parametrize("dropped, named", [("head.centerness.bias", "head.centerness.bias"),
                                            ("head.cls_logits.weight", "head.classifier.cls_logits.weight"),
                                            ("backbone.dyhead_tower.1.offset.weight", "dyhead.1.spatial_conv_offset"),
                                            ("backbone.backbone.fpn_output4.weight", "fpn.output_convs.1.weight")])
def test_missing_weights_are_named(detectron2_checkpoint, dropped, named):
    with pytest.raises(ValueError, match=f"missing.*{named}"):
        convert_dyhead({k: v for k, v in detectron2_checkpoint.items() if k != dropped})


def test_unrepresentable_or_mislabelled_checkpoints_are_refused(detectron2_checkpoint, mmdet_checkpoint, tmp_path):
    on_input = {**mmdet_checkpoint, "neck.0.fpn_convs.3.conv.weight": torch.zeros(FPN, 8 * EMBED, 3, 3)}
    with pytest.raises(ValueError, match="C5"):
        convert_dyhead(on_input)
    with pytest.raises(ValueError, match="'detectron2' layout, not 'mmdet'"):
        convert_dyhead(detectron2_checkpoint, "mmdet")
    with pytest.raises(ValueError, match="Not a DyHead checkpoint"):
        convert_dyhead({"patch_embed.proj.weight": torch.zeros(1)})
    path = tmp_path / "mmdet.pth"
    torch.save(mmdet_checkpoint, path)
    main(["--checkpoint", str(path), "--output", str(tmp_path / "out")])  # mmdet converts as it is (no P7 ReLU)
    assert FlorenceForObjectDetection.from_pretrained(tmp_path / "out").config.relu_before_p7 is False


# ----------------------------------------------------------------------------------------------------------------------
# What the checkpoint claims; a pipeline-ready folder
# ----------------------------------------------------------------------------------------------------------------------
def test_depth_is_checked_against_the_checkpoints_claims(detectron2_checkpoint, mmdet_checkpoint, tmp_path, capsys):
    odd = {k: v for k, v in detectron2_checkpoint.items() if ".layers.3.blocks.1." not in k}
    with pytest.raises(ValueError, match=r"Inconsistent vision depths \[2, 2, 2, 1\]: Swin blocks come in pairs"):
        convert_dyhead(odd)
    assert "DyHead architecture read from the weights: vision embed_dim=16" in capsys.readouterr().out
    # mmdet keeps its config's text in `meta`: a checkpoint missing its last DyHead block is refused.
    short = {k: v for k, v in mmdet_checkpoint.items() if not k.startswith(f"neck.1.dyhead_blocks.{BLOCKS - 1}.")}
    config_text = (f"model = dict(backbone=dict(type='SwinTransformer', embed_dims={EMBED}, depths={list(DEPTHS)}), "
                   f"neck=[dict(type='FPN', out_channels={FPN}), dict(type='DyHead', num_blocks={BLOCKS})], "
                   f"bbox_head=dict(type='ATSSHead', num_classes={CLASSES}))")
    torch.save({"state_dict": short, "meta": {"config": config_text}}, tmp_path / "short.pth")
    with pytest.raises(SystemExit, match=rf"Inconsistent num_dyhead_blocks: .* give {BLOCKS - 1} but .*short\.pth's "
                                         rf"metadata declares {BLOCKS}"):
        main(["--checkpoint", str(tmp_path / "short.pth"), "--output", str(tmp_path / "a")])
    torch.save({"state_dict": mmdet_checkpoint, "meta": {"config": config_text}}, tmp_path / "full.pth")
    assert convert_dyhead(tmp_path / "full.pth").config.num_dyhead_blocks == BLOCKS
    with pytest.raises(SystemExit, match=r"Inconsistent vision embed_dim: .* give 16 but --config declares 96"):
        main(["--checkpoint", str(tmp_path / "full.pth"), "--output", str(tmp_path / "b"), "--config", "swin-t"])


def test_the_converted_folder_runs_in_the_object_detection_pipeline(detectron2_checkpoint, tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    from modeling_florence import FlorenceDetectionImageProcessor

    torch.save({"model": detectron2_checkpoint}, tmp_path / "dyhead.pth")
    main(["--checkpoint", str(tmp_path / "dyhead.pth"), "--output", str(tmp_path / "out")])
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert isinstance(processor, FlorenceDetectionImageProcessor)
    assert (processor.size["shortest_edge"], processor.size["longest_edge"]) == (800, 1333)
    np.testing.assert_allclose(processor.image_mean, [0.485, 0.456, 0.406])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 140, 3), dtype=np.uint8))
    detections = pipeline("object-detection", model=str(tmp_path / "out"))(image, threshold=0.0)
    assert detections and {"score", "label", "box"} <= set(detections[0])
