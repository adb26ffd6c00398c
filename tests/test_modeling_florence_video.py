"""Tests of `modeling_florence/modeling_florence_video.py`."""

import pytest
import torch
from torchvision.models.video import swin3d_t
from transformers import AutoModel, AutoModelForVideoClassification, pipeline

import modeling_florence as mf
from conversion.convert_video_swin import convert, convert_state_dict, main as convert_main
from modeling_florence import (
    FlorenceForVideoClassification,
    FlorenceModel,
    FlorenceProcessor,
    FlorenceVideoModel,
    FlorenceVideoVisionModel,
    FlorenceVisionModel,
    unicl_loss,
)
from modeling_florence.modeling_florence_video import (
    FlorenceVideoLayer,
    inflate_relative_position_bias,
    relative_position_index_3d,
    shifted_window_mask_3d,
)
from tests.test_common import tiny_video_classification_config

from florence_testing import tiny_torchvision_swin3d, tiny_video_config, tiny_vision
from florence_testing import perturb_


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return mf.FlorenceForVideoClassification(tiny_video_classification_config())


def clips(batch=2):
    config = tiny_video_classification_config().vision_config
    return torch.randn(batch, config.num_frames, 3, 24, 24)


EOS = 49407


def text_batch(batch=3, length=7):
    input_ids = torch.randint(1, 49000, (batch, length), generator=torch.Generator().manual_seed(1))
    input_ids[:, 0], input_ids[:, -1] = 49406, EOS
    return input_ids


@pytest.fixture(scope="module")
def image_model():
    """A florence-tiny image model with non-trivial weights (window 4, patch 4, conv embeddings)."""
    torch.manual_seed(0)
    return perturb_(FlorenceModel(mf.load_preset("florence-tiny"))).eval()


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [5, -7]])
def test_labels_out_of_range_are_refused(classifier, labels):
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\) \(num_labels\) or -100"):
        classifier(pixel_values=clips(), labels=torch.tensor(labels))


def test_all_ignored_labels_give_a_zero_loss_with_gradients(classifier):
    classifier.zero_grad()
    loss = classifier(pixel_values=clips(), labels=torch.tensor([-100, -100])).loss
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in classifier.parameters())
    classifier.eval()
    videos = clips()
    some = classifier(pixel_values=videos, labels=torch.tensor([-100, 2])).loss  # the other video's loss alone
    alone = classifier(pixel_values=videos[1:], labels=torch.tensor([2])).loss
    torch.testing.assert_close(some, alone)


def test_a_processor_output_as_pixel_values_is_refused(classifier):
    from transformers import BatchFeature

    with pytest.raises(ValueError, match="pixel_values must be a tensor, got BatchFeature"):
        classifier(pixel_values=BatchFeature({"pixel_values_videos": clips()}), num_views=1)


# --- windows, mask, bias -------------------------------------------------------------------------------------------
def test_relative_position_index_is_row_major_over_offsets():
    index = relative_position_index_3d((2, 3, 3), (2, 3, 3))
    assert index.shape == (18, 18) and index.max() == 3 * 5 * 5 - 1 and index.min() == 0
    # token 0 = (0,0,0), token 17 = (1,2,2): offset (-1,-2,-2) -> (0,0,0) after the shift; reversed -> the last row.
    assert index[0, 17] == 0 and index[17, 0] == 3 * 5 * 5 - 1
    assert (index.diagonal() == (1 * 5 * 5 + 2 * 5 + 2)).all()  # zero offset
    # a shrunk window reads the exact sub-table: same offsets -> same entries of the full window's table
    small = relative_position_index_3d((1, 2, 3), (2, 3, 3))
    assert small[0, 1] == index[0, 1] and small[0, 3] == index[0, 3]


def test_shifted_window_mask_separates_the_regions():
    mask = shifted_window_mask_3d((4, 4, 4), (2, 2, 2), (1, 1, 1), "cpu", torch.float32)
    assert mask.shape == (8, 8, 8)
    assert (mask[0] == 0).all()  # the first window holds one region only
    last = mask[-1]  # the wrapped corner window: all eight tokens come from different regions
    assert (last.diagonal() == 0).all() and (last + torch.eye(8) * -100 == -100).all()


def test_shifted_block_attends_within_regions_only():
    """A shifted block's output at a token must not depend on tokens the cyclic shift wrapped next to it."""
    torch.manual_seed(0)
    config = tiny_vision(depths=[2], num_heads=[2], window_size=(2, 2, 2), embed_dim=8)
    config._attn_implementation = "eager"
    block = FlorenceVideoLayer(config, 8, 2, (2, 2, 2), shifted=True, drop_path_rate=0.0).eval()
    hidden = torch.randn(1, 4, 4, 4, 8)
    poked = hidden.clone()
    poked[0, 0, 0, 0] += 3 * torch.randn(8)  # not a constant: LayerNorm would erase that
    with torch.no_grad():
        before, after = block(hidden)[0], block(poked)[0]
    # (3,3,3) shares a shifted window with (0,0,0) but lies in another region: untouched
    torch.testing.assert_close(after[0, 3, 3, 3], before[0, 3, 3, 3], atol=1e-6, rtol=0)
    # (1,1,1) and (2,2,2) share an unwrapped shifted window (one region): they do interact
    poked = hidden.clone()
    poked[0, 1, 1, 1] += 3 * torch.randn(8)
    with torch.no_grad():
        changed = block(poked)[0]
    assert (changed[0, 2, 2, 2] - before[0, 2, 2, 2]).abs().max() > 1e-3


# --- the vision tower ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch_embed, downsample", [("conv", "conv"), ("linear", "merge")])
def test_one_instance_runs_any_frames_and_resolution(patch_embed, downsample):
    torch.manual_seed(0)
    model = FlorenceVideoVisionModel(tiny_vision(patch_embed=patch_embed, downsample=downsample)).eval()
    for frames, height, width in [(4, 32, 32), (5, 37, 50), (12, 24, 20), (2, 8, 8)]:
        with torch.no_grad():
            out = model(torch.randn(2, frames, 3, height, width), output_hidden_states=True)
        time = -(-frames // 2)
        # linear: tubes zero-padded to multiples of 4; conv: CvT's 7x7 stride 4 padding 2 gives (n - 3) // 4 + 1
        side = tuple(-(-n // 4) if patch_embed == "linear" else (n - 3) // 4 + 1 for n in (height, width))
        merged = -(-side[0] // 2), -(-side[1] // 2)
        assert [tuple(f.shape) for f in out.feature_maps] == [(2, 16, time, *side), (2, 32, time, *merged)]
        assert out.last_hidden_state.shape == (2, time * merged[0] * merged[1], 32)
        torch.testing.assert_close(out.pooler_output, out.last_hidden_state.mean(1))
        assert len(out.hidden_states) == 3 and torch.isfinite(out.pooler_output).all()
    as_tuple = model(torch.randn(1, 4, 3, 16, 16), return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (1, 2 * 2 * 2, 32)


def test_per_stage_windows_build_per_stage_bias_tables():
    model = FlorenceVideoVisionModel(tiny_vision(window_sizes=[(1, 3, 3), (2, 5, 5)]))
    assert model.stages[0].blocks[0].attn.relative_position_bias_table.shape == (1 * 5 * 5, 1)
    assert model.stages[1].blocks[1].attn.relative_position_bias_table.shape == (3 * 9 * 9, 2)
    assert model.stages[1].blocks[1].window_and_shift((6, 10, 10)) == ((2, 5, 5), (1, 2, 2))
    assert model.stages[1].blocks[1].window_and_shift((1, 10, 4)) == ((1, 5, 4), (0, 2, 0))


@pytest.mark.parametrize("model_class", [FlorenceVideoVisionModel, FlorenceVideoModel, FlorenceForVideoClassification])
def test_init_weights_covers_every_parameter(model_class):
    config = tiny_vision() if model_class is FlorenceVideoVisionModel else tiny_video_config()
    with torch.device("meta"):
        on_meta = model_class(config)
    assert all(p.is_meta for p in on_meta.parameters())
    model = model_class(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    for module in model.modules():
        module._is_hf_initialized = False
    for parameter in model.parameters():
        parameter._is_hf_initialized = False
    model.initialize_weights()
    for name, parameter in model.named_parameters():
        if name.startswith("text_model.") and ("self_attn" in name or ".mlp." in name):
            continue  # the text tower's own init (modeling_florence) leaves these to torch; reported, not ours
        assert torch.isfinite(parameter).all(), f"{name} is not initialised by _init_weights"
    tables = [p for n, p in model.named_parameters() if "bias_table" in n]
    assert all(t.std() > 0 for t in tables)


@pytest.mark.parametrize("frames, height, width", [(16, 224, 224), (18, 120, 150)])
def test_linear_merge_mode_matches_torchvision_swin3d(frames, height, width):
    """16x224 is swin3d's default; 18x120x150 pads time (9 -> 16) and space on every stage, and shrinks the spatial
    window on the last stage (where the peers' truncated bias index differs from the sub-table)."""
    reference = tiny_torchvision_swin3d()
    model = convert(reference.state_dict())
    assert isinstance(model, FlorenceForVideoClassification) and model.config.vision_config.window_bias == "truncated"
    clip = torch.randn(1, 3, frames, height, width)
    with torch.no_grad():
        expected = reference.norm(reference.features(reference.patch_embed(clip)))  # (B, T, H, W, C) features
        out = model.vision_model(clip.transpose(1, 2))
        logits = model(clip.transpose(1, 2)).logits
    torch.testing.assert_close(out.last_hidden_state, expected.flatten(1, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, reference(clip), atol=1e-5, rtol=0)


def test_swin3d_t_state_dict_converts_and_matches():
    """torchvision's own swin3d_t (random weights): every key maps, and the features match within 1e-5."""
    torch.manual_seed(0)
    reference = swin3d_t().eval()
    model = convert(reference.state_dict())
    vision = model.config.vision_config
    assert (vision.embed_dim, vision.depths, vision.num_heads, vision.window_size, vision.patch_size) == (
        96, [2, 2, 6, 2], [3, 6, 12, 24], [8, 7, 7], [2, 4, 4])
    assert model.config.num_labels == 400
    clip = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        expected = reference.norm(reference.features(reference.patch_embed(clip))).flatten(1, 3)
        actual = model.vision_model(clip.transpose(1, 2)).last_hidden_state
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_mmaction_checkpoint_converts_like_torchvision(tmp_path):
    """An mmaction2 / official Video Swin state dict (backbone.layers.S.blocks.B..., downsample at the end of a
    stage, cls_head.fc_cls) converts to the same model as the torchvision one; the CLI writes a loadable folder."""
    reference = tiny_torchvision_swin3d()
    mmaction = {}
    for key, value in reference.state_dict().items():
        parts = key.split(".")
        if parts[0] == "features" and int(parts[1]) % 2 == 0:
            rest = ".".join(parts[3:]).replace("mlp.0", "mlp.fc1").replace("mlp.3", "mlp.fc2")
            key = f"backbone.layers.{int(parts[1]) // 2}.blocks.{parts[2]}.{rest}"
        elif parts[0] == "features":
            key = f"backbone.layers.{(int(parts[1]) - 1) // 2}.downsample.{'.'.join(parts[2:])}"
        elif parts[0] == "head":
            key = "cls_head.fc_cls." + parts[1]
        else:
            key = "backbone." + key
        mmaction[key] = value
    assert convert_state_dict({"state_dict": mmaction}).keys() == convert_state_dict(reference.state_dict()).keys()
    torch.save({"state_dict": mmaction}, tmp_path / "video_swin.pth")
    convert_main(["--checkpoint", str(tmp_path / "video_swin.pth"), "--output", str(tmp_path / "converted")])
    from huggingface_hub import ModelCard

    assert ModelCard.load(tmp_path / "converted" / "README.md").data.base_model == "video_swin.pth"
    model = AutoModelForVideoClassification.from_pretrained(tmp_path / "converted").eval()
    clip = torch.randn(1, 3, 8, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(clip.transpose(1, 2)).logits, reference(clip), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="Not a Video Swin checkpoint"):
        convert_state_dict({"encoder.weight": torch.zeros(1)})


# --- inflation -----------------------------------------------------------------------------------------------------
def test_inflation_rules():
    weight = torch.randn(8, 3, 7, 7)
    from modeling_florence.modeling_florence_video import inflate_conv_weight

    inflated = inflate_conv_weight(weight, 2)
    assert inflated.shape == (8, 3, 2, 7, 7)
    torch.testing.assert_close(inflated.sum(dim=2), weight)
    table = torch.randn(49, 3)  # window 4 in 2-D
    same = inflate_relative_position_bias(table, (3, 4, 4))
    assert same.shape == (5 * 49, 3) and all(torch.equal(same[i * 49 : (i + 1) * 49], table) for i in range(5))
    resized = inflate_relative_position_bias(table, (2, 6, 6))
    assert resized.shape == (3 * 121, 3) and torch.equal(resized[:121], resized[121:242])


# Inflation is exact on a clip of identical frames when no zero padding enters a window along time, i.e. when the
# token length T' = ceil(frames / patch_t) is at most the temporal window of every stage or a multiple of it (the
# conv tokenizer completes a clip by repeating its last frame, and the conv merging pads time by repeating edge
# frames), and the spatial windows are the image model's. Spatial padding is then the image model's own.
@pytest.mark.parametrize(
    "frames, side, window_sizes",
    [
        (8, 32, None),  # T' = 4 = window
        (16, 32, None),  # T' = 8, a multiple of 4
        (7, 40, None),  # odd frame count (last frame repeated); 40 px: spatial padding in both models
        (8, 32, [(2, 4, 4), (4, 4, 4), (4, 4, 4), (4, 4, 4)]),  # the florence-video-tiny dynamic windows
        (2, 64, None),  # T' = 1: a single temporal token
    ],
)
def test_inflated_model_on_a_still_clip_equals_the_image_model(image_model, frames, side, window_sizes):
    video = FlorenceVideoModel.from_florence(image_model, num_frames=frames, window_size=4,
                                                window_sizes=window_sizes).eval()
    frame = torch.randn(2, 3, side, side)
    clip = frame[:, None].expand(-1, frames, -1, -1, -1)
    with torch.no_grad():
        expected = image_model.vision_model(frame).pooler_output
        actual = video.vision_model(clip).pooler_output
        image_logits = image_model(input_ids=text_batch(), pixel_values=frame).logits_per_image
        video_logits = video(input_ids=text_batch(), pixel_values=clip).logits_per_video
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(video_logits, image_logits, atol=1e-4, rtol=0)


def test_inflation_is_not_exact_when_time_is_zero_padded(image_model):
    """The stated condition is sharp: T' = 5 with a temporal window of 4 pads three zero tokens along time."""
    video = FlorenceVideoVisionModel.from_florence(image_model, num_frames=10, window_size=4).eval()
    frame = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        gap = (video(frame[:, None].expand(-1, 10, -1, -1, -1)).pooler_output
               - image_model.vision_model(frame).pooler_output).abs().max()
    assert gap > 1e-3


def test_inflation_in_swin_mode_and_from_a_vision_folder(tmp_path):
    torch.manual_seed(0)
    image_tower = perturb_(FlorenceVisionModel(
        mf.FlorenceVisionConfig(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4,
                                patch_embed="linear", downsample="merge"))).eval()
    image_tower.save_pretrained(tmp_path)
    video = FlorenceForVideoClassification.from_florence(
        str(tmp_path), num_frames=4, window_size=2, id2label={0: "left", 1: "right"}).eval()
    assert video.config.id2label == {0: "left", 1: "right"} and video.config.vision_config.patch_embed == "linear"
    frame = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(video.vision_model(frame[:, None].expand(-1, 4, -1, -1, -1)).pooler_output,
                                   image_tower(frame).pooler_output, atol=1e-4, rtol=0)


def test_from_florence_copies_the_text_tower_from_a_folder(image_model, tmp_path):
    image_model.save_pretrained(tmp_path)
    video = FlorenceVideoModel.from_florence(str(tmp_path), num_frames=4)
    assert video.config.vision_config.window_size == [8, 4, 4] and video.config.num_frames == 4
    input_ids = text_batch()
    with torch.no_grad():
        torch.testing.assert_close(video.get_text_features(input_ids).pooler_output,
                                   image_model.get_text_features(input_ids).pooler_output)
    assert video.logit_scale.item() == image_model.logit_scale.item()
    changed = FlorenceVideoVisionModel.from_florence(image_model, window_size=(2, 6, 6))  # bias table resized
    assert changed.stages[0].blocks[0].attn.relative_position_bias_table.shape == (3 * 11 * 11, 1)
    with pytest.raises(ValueError, match="two-tower FlorenceModel"):
        FlorenceVideoModel.from_florence(image_model.vision_model)


# --- video-text model and classification -------------------------------------------------------------------------
def test_video_text_model_outputs_and_unicl_loss():
    torch.manual_seed(0)
    model = FlorenceVideoModel(tiny_video_config()).eval()
    clip, input_ids = torch.randn(3, 4, 3, 24, 24), text_batch()
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values_videos=clip, labels=torch.tensor([0, 1, 0]))
        plain = model(input_ids=input_ids, pixel_values=clip, return_loss=True)
    assert out.logits_per_video.shape == (3, 3)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_video.t())
    torch.testing.assert_close(out.video_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.loss, unicl_loss(out.logits_per_video, torch.tensor([0, 1, 0])))
    torch.testing.assert_close(plain.loss, unicl_loss(plain.logits_per_video, torch.arange(3)))
    as_tuple = model(input_ids=input_ids, pixel_values=clip, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.logits_per_video)  # no loss asked: logits first
    views = model.get_video_features(torch.randn(6, 4, 3, 24, 24), num_views=3).pooler_output
    assert views.shape == (2, 24)


def test_classification_loss_views_and_save_load(tmp_path):
    torch.manual_seed(0)
    config = tiny_video_config()
    config.id2label, config.label2id = {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2}
    model = FlorenceForVideoClassification(config).eval()
    clip, labels = torch.randn(2, 4, 3, 24, 24), torch.tensor([2, 0])
    with torch.no_grad():
        out = model(clip, labels=labels)
        single = torch.cat([model(clip[i : i + 1]).logits for i in range(2)])
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    torch.testing.assert_close(out.logits, single, atol=1e-5, rtol=0)  # batching does not change results
    with torch.no_grad():
        averaged = model(clip.repeat_interleave(2, dim=0), num_views=torch.tensor(2)).logits  # 2 views per video
    torch.testing.assert_close(averaged.exp(), out.logits.softmax(-1), atol=1e-5, rtol=0)  # mean of equal views
    model.save_pretrained(tmp_path)
    for loader in (AutoModelForVideoClassification, FlorenceForVideoClassification):
        reloaded = loader.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(clip).logits, out.logits, atol=0, rtol=0)
    tower = FlorenceVideoVisionModel.from_pretrained(tmp_path)  # the tower alone from the classifier's folder
    torch.testing.assert_close(tower.stages[0].blocks[0].attn.qkv.weight, model.vision_model.stages[0].blocks[0].attn.qkv.weight)
    assert isinstance(AutoModel.from_pretrained(tmp_path), FlorenceVideoModel)


def test_video_classification_pipeline_on_a_video_file(tmp_path, video_writer):
    torch.manual_seed(0)
    config = mf.load_preset("florence-video-tiny", id2label={0: "left", 1: "right", 2: "still"})
    FlorenceForVideoClassification(config).save_pretrained(tmp_path)
    FlorenceProcessor.from_defaults(image_size=32, num_frames=8).save_pretrained(tmp_path)
    video_writer(tmp_path / "clip.mp4", frames=12)
    classifier = pipeline("video-classification", model=str(tmp_path))
    scores = classifier(str(tmp_path / "clip.mp4"))
    assert sorted(s["label"] for s in scores) == ["left", "right", "still"]
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)
    # the same numbers as processor + model by hand
    processor = FlorenceProcessor.from_pretrained(tmp_path)
    model = FlorenceForVideoClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        probs = model(**processor.video_processor(str(tmp_path / "clip.mp4"))).logits.softmax(-1)[0]
    assert scores[0]["score"] == pytest.approx(probs.max().item(), abs=1e-5)
    (tmp_path / "broken.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="broken.mp4"):
        classifier(str(tmp_path / "broken.mp4"))


# --- bad input -----------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    model = FlorenceVideoVisionModel(tiny_vision()).eval()
    with pytest.raises(ValueError, match="4-D tensor.*frames axis"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="1 frame.*fewer than the temporal patch"):
        model(torch.randn(1, 1, 3, 32, 32))
    with pytest.raises(ValueError, match="channels on axis 2"):
        model(torch.randn(1, 3, 4, 32, 32))  # (B, C, T, H, W): torchvision's layout
    with pytest.raises(ValueError, match="smaller than one patch"):
        model(torch.randn(1, 4, 3, 2, 32))
    with pytest.raises(ValueError, match="required"):
        model()
    classifier = FlorenceForVideoClassification(tiny_video_config())
    with pytest.raises(ValueError, match="labels must have shape"):
        classifier(torch.randn(2, 4, 3, 16, 16), labels=torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="num_views=3"):
        classifier(torch.randn(2, 4, 3, 16, 16), num_views=3)
