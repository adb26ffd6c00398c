"""Tests of `modeling_florence/modeling_coswin.py`."""

import pytest
import torch
from transformers import AutoBackbone

import modeling_florence as mf
from modeling_florence import FlorenceVisionBackbone, FlorenceVisionModel
from modeling_florence.configuration_florence_video import FlorenceVideoVisionConfig
from modeling_florence.configuration_florence_vqa import FlorenceVQAConfig
from modeling_florence.modeling_coswin import (
    PATCH_EMBEDDINGS,
    FlorenceVisionLayer,
    FlorenceVisionPatchMerging,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from modeling_florence.modeling_florence_video import (
    DOWNSAMPLE_CLASSES,
    DOWNSAMPLERS,
    EMBEDDING_CLASSES,
    FlorenceVideoLayer,
    FlorenceVideoPatchMerging,
    FlorenceVideoVisionModel,
    window_partition_3d,
    window_reverse_3d,
    PATCH_EMBEDDINGS as VIDEO_PATCH_EMBEDDINGS,
)
from tests.test_common import pixel_inputs

from florence_testing import same_weights, tiny_window7_vision_config


# The constructions of the two towers before they shared one core, written out per dimension as they were.
def old_partition_2d(x, window):
    batch, height, width, channels = x.shape
    wh, ww = window
    x = x.view(batch, height // wh, wh, width // ww, ww, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, channels)


def old_partition_3d(x, window):
    batch, time, height, width, channels = x.shape
    wt, wh, ww = window
    x = x.view(batch, time // wt, wt, height // wh, wh, width // ww, ww, channels)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wt * wh * ww, channels)


def old_index_2d(window, table):
    coords = torch.stack(torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij")).flatten(1)
    relative = coords[:, :, None] - coords[:, None, :] + (table - 1)
    return relative[0] * (2 * table - 1) + relative[1]


def old_index_3d(window, table):
    coords = torch.stack(torch.meshgrid(*(torch.arange(size) for size in window), indexing="ij")).flatten(1)
    relative = coords[:, :, None] - coords[:, None, :]
    offsets = [relative[axis] + (table[axis] - 1) for axis in range(3)]
    return offsets[0] * (2 * table[1] - 1) * (2 * table[2] - 1) + offsets[1] * (2 * table[2] - 1) + offsets[2]


def old_mask_2d(padded, window, shift):
    region = torch.zeros(padded, dtype=torch.int32)
    count = 0
    for h in (slice(0, -window[0]), slice(-window[0], -shift[0] or None), slice(-shift[0] or None, None)):
        for w in (slice(0, -window[1]), slice(-window[1], -shift[1] or None), slice(-shift[1] or None, None)):
            region[h, w] = count
            count += 1
    windows = old_partition_2d(region[None, :, :, None], window).squeeze(-1)
    return torch.zeros(windows.shape[0], windows.shape[1], windows.shape[1]).masked_fill_(
        windows[:, None, :] != windows[:, :, None], -100.0
    )


def old_mask_3d(padded, window, shift):
    region = torch.zeros(padded, dtype=torch.int32)
    slices = [(slice(0, -s), slice(-s, -t or None), slice(-t or None, None)) for s, t in zip(window, shift)]
    count = 0
    for a in slices[0]:
        for b in slices[1]:
            for c in slices[2]:
                region[a, b, c] = count
                count += 1
    windows = old_partition_3d(region[None, ..., None], window).squeeze(-1)
    return torch.zeros(windows.shape[0], windows.shape[1], windows.shape[1]).masked_fill_(
        windows[:, None, :] != windows[:, :, None], -100.0
    )


def vision_config(**overrides):
    fields = dict(embed_dim=16, depths=[2], num_heads=[2], window_size=4, drop_path_rate=0.0,
                  attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
    fields.update(overrides)
    return mf.FlorenceVisionConfig(**fields)


def video_config(**overrides):
    fields = dict(embed_dim=16, depths=[2], num_heads=[2], patch_size=(1, 4, 4), window_size=(1, 4, 4),
                  drop_path_rate=0.0, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0, num_frames=1)
    fields.update(overrides)
    return FlorenceVideoVisionConfig(**fields)


@pytest.mark.parametrize("size, window", [((8, 12), (4, 3)), ((7, 7), (7, 7)), ((4, 6, 9), (2, 3, 3)), ((2, 4, 4), (1, 2, 4))])
def test_partition_matches_the_old_construction_and_reverse_inverts_it(size, window):
    x = torch.randn(2, *size, 5)
    windows = window_partition(x, window)
    old = old_partition_2d(x, window) if len(size) == 2 else old_partition_3d(x, window)
    assert torch.equal(windows, old)
    assert torch.equal(window_reverse(windows, window, *size), x)
    if len(size) == 3:
        assert torch.equal(window_partition_3d(x, window), windows)
        assert torch.equal(window_reverse_3d(windows, window, size), x)


@pytest.mark.parametrize("window, table", [((7, 7), 7), ((3, 5), 7), ((2, 2), 4)])
def test_relative_position_index_2d_matches_the_old_construction(window, table):
    assert torch.equal(relative_position_index(window, table), old_index_2d(window, table))


@pytest.mark.parametrize("window, table", [((2, 3, 3), (2, 3, 3)), ((1, 2, 3), (2, 3, 3)), ((8, 7, 7), (8, 7, 7))])
def test_relative_position_index_3d_matches_the_old_construction(window, table):
    assert torch.equal(relative_position_index(window, table), old_index_3d(window, table))


@pytest.mark.parametrize(
    "padded, window, shift",
    [((8, 8), (4, 4), (2, 2)), ((14, 21), (7, 7), (3, 3)), ((8, 6), (4, 6), (2, 0)),
     ((4, 4, 4), (2, 2, 2), (1, 1, 1)), ((4, 10, 10), (2, 5, 5), (1, 2, 2)), ((1, 10, 4), (1, 5, 4), (0, 2, 0))],
)
def test_shifted_window_mask_matches_the_old_construction(padded, window, shift):
    mask = shifted_window_mask(padded, window, shift, "cpu", torch.float32)
    old = old_mask_2d(padded, window, shift) if len(padded) == 2 else old_mask_3d(padded, window, shift)
    assert torch.equal(mask, old)
    assert mask.abs().sum() > 0  # every case shifts along some axis: the mask is not trivially zero


def test_patch_merging_of_a_clip_is_the_image_merging_of_each_frame():
    torch.manual_seed(0)
    image = FlorenceVisionPatchMerging(vision_config(), 8).eval()
    video = FlorenceVideoPatchMerging(video_config(), 8).eval()
    video.load_state_dict(image.state_dict())
    clip = torch.randn(2, 3, 7, 6, 8)  # odd height: zero-padded
    expected = torch.stack([image(clip[:, t]) for t in range(3)], dim=1)
    torch.testing.assert_close(video(clip), expected, atol=0, rtol=0)


@pytest.mark.parametrize("shifted", [False, True])
def test_a_one_frame_video_block_is_the_image_block(shifted):
    """The 2-D and 3-D blocks are one forward: a `(1, w, w)` window over a one-frame clip reproduces the 2-D block."""
    torch.manual_seed(0)
    image = FlorenceVisionLayer(vision_config(), 16, 2, shifted=shifted, drop_path_rate=0.0).eval()
    video = FlorenceVideoLayer(video_config(), 16, 2, (1, 4, 4), shifted=shifted, drop_path_rate=0.0).eval()
    video.load_state_dict(image.state_dict())
    tokens = torch.randn(2, 10, 9, 16)  # not window multiples: padded and cropped
    with torch.no_grad():
        torch.testing.assert_close(video(tokens[:, None])[0][:, 0], image(tokens)[0], atol=1e-6, rtol=1e-5)


def test_the_shift_mask_is_built_once_per_shape_in_eager_mode():
    layer = FlorenceVisionLayer(vision_config(), 16, 2, shifted=True, drop_path_rate=0.0).eval()
    first = layer.shift_mask((8, 8), (4, 4), (2, 2), torch.device("cpu"), torch.float32)
    assert layer.shift_mask((8, 8), (4, 4), (2, 2), torch.device("cpu"), torch.float32) is first
    other = layer.shift_mask((12, 8), (4, 4), (2, 2), torch.device("cpu"), torch.float32)
    assert other.shape[0] == 6 and len(layer._mask_cache) == 1  # one entry: the last shape


def test_one_init_for_both_towers_fills_the_relative_position_index():
    for model in (mf.FlorenceVisionModel(vision_config()), FlorenceVideoVisionModel(video_config(window_size=(1, 3, 3)))):
        attention = model.stages[0].blocks[0].attn
        assert torch.equal(attention.relative_position_index,
                           relative_position_index(attention.window_size, attention.window_size))
        assert attention.relative_position_bias_table.std() > 0


def test_renamed_names_keep_their_old_names_as_aliases(tmp_path):
    assert EMBEDDING_CLASSES is VIDEO_PATCH_EMBEDDINGS and DOWNSAMPLE_CLASSES is DOWNSAMPLERS
    assert set(VIDEO_PATCH_EMBEDDINGS) == set(PATCH_EMBEDDINGS)
    config = FlorenceVQAConfig(image_feature_stages=[1])
    assert config.vision_feature_stages == [1] and config.image_feature_stages == [1]
    assert FlorenceVQAConfig().vision_feature_stages == [len(FlorenceVQAConfig().vision_config.depths)]
    image = mf.FlorenceVisionModel(vision_config(depths=[2, 2], num_heads=[1, 2])).eval()
    torch.manual_seed(0)
    new = FlorenceVideoVisionModel.from_florence(image, num_frames=2, window_size=2)
    with pytest.warns(FutureWarning, match="from_image_model is deprecated"):
        old = FlorenceVideoVisionModel.from_image_model(image, num_frames=2, window_size=2)
    for (name, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("source", ["coswin", "two-tower", "backbone"])
def test_auto_backbone_loads_the_encoder_from_every_folder(florence, two_tower_folder, tmp_path, source):
    folder = two_tower_folder
    if source == "coswin":
        folder = tmp_path / "coswin"
        FlorenceVisionModel.from_pretrained(two_tower_folder).save_pretrained(folder)
    elif source == "backbone":
        folder = tmp_path / "backbone"
        FlorenceVisionBackbone.from_pretrained(two_tower_folder, config=None).save_pretrained(folder)
    backbone = AutoBackbone.from_pretrained(str(folder), out_features=["stage2", "stage3"])
    assert isinstance(backbone, FlorenceVisionBackbone)
    assert backbone.out_features == ["stage2", "stage3"]
    assert same_weights(backbone.vision_model, florence.vision_model)
    maps = backbone(**pixel_inputs(1, size=(64, 64))).feature_maps
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 8, 8), (64, 4, 4)]


# --- CoSwin -------------------------------------------------------------------------------------------------------
def test_coswin_uses_cvt_convolutional_embeddings():
    vision = FlorenceVisionModel(tiny_window7_vision_config())
    stem = vision.embeddings.projection
    assert (stem.kernel_size, stem.stride, stem.padding) == ((7, 7), (4, 4), (2, 2))
    merge = vision.stages[1].downsample.projection
    assert (merge.kernel_size, merge.stride, merge.padding) == ((3, 3), (2, 2), (1, 1))
    swin = FlorenceVisionModel(tiny_window7_vision_config(patch_embed="linear", downsample="merge"))
    assert swin.embeddings.projection.kernel_size == (4, 4)
    assert swin.stages[1].downsample.reduction.in_features == 4 * 16


@pytest.mark.parametrize("mode", ["conv", "linear"])
def test_one_instance_runs_at_any_resolution(mode):
    vision = FlorenceVisionModel(
        tiny_window7_vision_config(patch_embed=mode, downsample="conv" if mode == "conv" else "merge")
    ).eval()
    for height, width in [(224, 224), (384, 384), (800, 1333)]:
        with torch.no_grad():
            output = vision(torch.randn(1, 3, height, width), output_hidden_states=True)
        maps = output.feature_maps
        assert [m.shape[1] for m in maps] == [16, 32, 64]
        for stage, feature_map in enumerate(maps):  # strides 4, 8, 16 up to rounding
            assert abs(feature_map.shape[2] - height / 4 / 2**stage) <= 1
            assert abs(feature_map.shape[3] - width / 4 / 2**stage) <= 1
        assert output.last_hidden_state.shape == (1, maps[-1].shape[2] * maps[-1].shape[3], 64)
        torch.testing.assert_close(output.pooler_output, output.last_hidden_state.mean(1))
        assert len(output.hidden_states) == 4


def test_small_windows_read_the_exact_sub_table():
    """A 4x4 map under a 7x7 window config equals a 4x4-window block whose bias table is the centre crop."""
    torch.manual_seed(0)
    large = FlorenceVisionLayer(tiny_window7_vision_config(window_size=7), 16, 2, shifted=True, drop_path_rate=0.0).eval()
    small = FlorenceVisionLayer(tiny_window7_vision_config(window_size=4), 16, 2, shifted=True, drop_path_rate=0.0).eval()
    torch.nn.init.normal_(large.attn.relative_position_bias_table)
    state = large.state_dict()
    table = state["attn.relative_position_bias_table"].view(13, 13, 2)
    state["attn.relative_position_bias_table"] = table[3:10, 3:10].reshape(49, 2)
    small.load_state_dict(state)
    hidden = torch.randn(2, 4, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(large(hidden)[0], small(hidden)[0])
    assert large.window_and_shift(4, 4) == ((4, 4), (0, 0))
    assert large.window_and_shift(4, 20) == ((4, 7), (0, 3))


def test_backbone_through_auto_backbone():
    config = tiny_window7_vision_config(out_features=["stage1", "stage2", "stage3"])
    backbone = AutoBackbone.from_config(config)
    assert isinstance(backbone, FlorenceVisionBackbone)
    assert backbone.channels == [16, 32, 64]
    with torch.no_grad():
        maps = backbone(torch.randn(2, 3, 96, 128)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 16, 24, 32), (2, 32, 12, 16), (2, 64, 6, 8)]
