"""HRNet against timm (random weights, converted, strict load) and the official HRNet-Semantic-Segmentation
checkpoint layout (key manifest and a round trip through the official names)."""

from __future__ import annotations

import re

import pytest
import torch
from testkit import compare
from torch import nn

import seglab.models.hrnet  # noqa: F401  (registers the fcn_hrnetv2_* models)
from seglab.backbones.hrnet import HRNET_CONFIGS, HRNet
from seglab.convert import convert_checkpoint
from seglab.convert.hrnet import (
    TIMM_BACKBONE_OPTIONS,
    convert_hrnet_official,
    convert_hrnet_timm,
    convert_hrnet_timm_backbone,
)
from seglab.registry import create_model

timm = pytest.importorskip("timm")

# 190 x 254 is neither square nor a multiple of 32, yet every branch is exactly half the one above
# (190 -> 95 -> 48 -> 24 -> 12 -> 6): timm's fuse upsamples by a scale factor (`nn.Upsample(scale_factor=2**k)`),
# which only lines up with the branch sizes when they halve exactly (at 200 x 264 the stride-16 branch is 13 high
# and 2 x 13 != 25 fails inside timm). Odd sizes of seglab's own model are covered in tests/unit/test_hrnet.py.
INPUT_SIZE = (190, 254)


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Random BN affine parameters, then running stats measured on random data (so that activations stay O(1)
    through ~100 layers) and perturbed."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5, generator=generator)
            norm.bias.uniform_(-0.1, 0.1, generator=generator)
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average: one batch sets the stats
        model.train()
        model(torch.randn(2, 3, 96, 128, generator=generator))
        for norm in norms:
            norm.running_mean.add_(0.1 * torch.randn(norm.running_mean.shape, generator=generator))
            norm.running_var.mul_(torch.empty(norm.running_var.shape).uniform_(0.8, 1.25, generator=generator))
    model.eval()


def timm_features(name: str) -> nn.Module:
    # feature_location='' returns the raw stage-4 branches (the default 'incre' passes them through the
    # classification head's channel-increase bottlenecks); index 0 would be the stride-2 stem output
    return timm.create_model(name, pretrained=False, features_only=True, feature_location="", out_indices=(1, 2, 3, 4))


@pytest.mark.parametrize(("timm_name", "variant"), [("hrnet_w18_small", "w18s_v1"), ("hrnet_w18", "w18")])
def test_backbone_matches_timm(timm_name: str, variant: str) -> None:
    generator = torch.Generator().manual_seed(0)
    reference = timm_features(timm_name)
    randomize_batchnorm(reference, generator)
    ours = HRNet(HRNET_CONFIGS[variant], **TIMM_BACKBONE_OPTIONS).eval()
    ours.load_state_dict(convert_hrnet_timm(reference.state_dict()), strict=True)

    x = torch.randn(1, 3, *INPUT_SIZE, generator=generator)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == 4
    for level, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert e.abs().max() > 1.0  # a real signal, not a collapsed one
        compare(g, e, pair=f"hrnet/timm {timm_name} {INPUT_SIZE} branch {level}")


@torch.no_grad()
def test_timm_classifier_as_pretrained_backbone(tmp_path) -> None:
    """The whole timm ImageNet classifier (`hrnet_w18_small`, head included) as a recipe's `model.pretrained`:
    converted to backbone-only weights of `fcn_hrnetv2_w18s_v1`, written as `seglab convert` writes them and loaded
    by the run's loader into the model built with the result's overrides; the backbone reproduces timm's features.
    `seglab convert --source official` takes the file (HRNet-Image-Classification's layout, which timm keeps)."""
    from seglab.checkpoint import load_backbone_weights, save_weights

    generator = torch.Generator().manual_seed(2)
    classifier = timm.create_model("hrnet_w18_small", pretrained=False)
    randomize_batchnorm(classifier, generator)
    result = convert_checkpoint(classifier.state_dict(), "official", "fcn_hrnetv2_w18s_v1")
    assert result.backbone_only and result.num_classes is None
    save_weights(tmp_path / "hrnet_w18s_v1.safetensors", result.state_dict, "fcn_hrnetv2_w18s_v1", None,
                 result.overrides, extra={"backbone_only": "true"})
    ours = create_model("fcn_hrnetv2_w18s_v1", num_classes=5, **result.overrides).eval()
    load_backbone_weights(ours, tmp_path / "hrnet_w18s_v1.safetensors")
    reference = timm_features("hrnet_w18_small")
    reference.load_state_dict({k: v for k, v in classifier.state_dict().items() if k in reference.state_dict()},
                              strict=True)
    x = torch.randn(1, 3, *INPUT_SIZE, generator=generator)
    for level, (g, e) in enumerate(zip(ours.backbone(x), reference.eval()(x), strict=True)):
        assert e.abs().max() > 1.0
        compare(g, e, pair=f"fcn_hrnetv2/timm hrnet_w18_small (model.pretrained) branch {level}")


def test_timm_classification_head_is_dropped_and_unknown_keys_refused() -> None:
    with torch.device("meta"):
        classifier = timm.create_model("hrnet_w18_small", pretrained=False)
    state = classifier.state_dict()
    converted = convert_hrnet_timm(state)
    with torch.device("meta"):
        ours = HRNet(HRNET_CONFIGS["w18s_v1"])
    assert set(converted) == set(ours.state_dict())
    with pytest.raises(ValueError, match="stage2.0.mystery.weight"):
        convert_hrnet_timm({**state, "stage2.0.mystery.weight": torch.zeros(1)})
    # as backbone-only weights of the segmentation model (ImageNet head dropped, shapes checked)
    result = convert_hrnet_timm_backbone(state, "fcn_hrnetv2_w18s_v1")
    assert result.backbone_only and result.num_classes is None
    assert result.overrides == {"fuse_upsample": "nearest"}
    assert set(result.state_dict) == {f"backbone.{k}" for k in ours.state_dict()}
    assert any(k.startswith("classifier.") for k in result.dropped)
    with pytest.raises(ValueError, match="shape mismatches"):
        convert_hrnet_timm_backbone(state, "fcn_hrnetv2_w18s")


# --- the official HRNet-Semantic-Segmentation layout ------------------------------------------------------------

def official_manifest(timm_name: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a released HRNet-Semantic-Segmentation checkpoint.

    The backbone names of the official `seg_hrnet.py` and timm's `hrnet.py` are the same (both are the
    HRNet-Image-Classification code: `conv1`, `bn1`, `layer1.{k}`, `transition{t}`, `stage{s}.{m}.branches` /
    `fuse_layers`); the head is `last_layer` = Conv2d(C, C, 1) with bias, BN, ReLU, Conv2d(C, classes, 1); the
    released files wrap the network in `FullModel` (`model.` prefix) next to the loss's class weights.
    """
    with torch.device("meta"):
        backbone = timm_features(timm_name)
    manifest = {f"model.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
    width = sum(backbone.feature_info.channels())
    manifest.update({
        "model.last_layer.0.weight": (width, width, 1, 1),
        "model.last_layer.0.bias": (width,),
        **{f"model.last_layer.1.{n}": (width,) for n in ("weight", "bias", "running_mean", "running_var")},
        "model.last_layer.1.num_batches_tracked": (),
        "model.last_layer.3.weight": (num_classes, width, 1, 1),
        "model.last_layer.3.bias": (num_classes,),
        "loss.criterion.weight": (num_classes,),
    })
    return manifest


def test_official_w48_manifest_converts() -> None:
    manifest = official_manifest("hrnet_w48", 19)
    # spot checks against the official code, independent of timm
    assert manifest["model.transition3.3.0.0.weight"] == (384, 192, 3, 3)  # new stride-32 branch
    assert manifest["model.stage4.2.fuse_layers.3.0.2.0.weight"] == (384, 48, 3, 3)  # 3rd stride-2 step, 1/4 -> 1/32
    assert manifest["model.stage4.2.fuse_layers.0.3.0.weight"] == (48, 384, 1, 1)  # 1x1 before upsampling
    assert manifest["model.last_layer.0.weight"] == (720, 720, 1, 1)  # 48 + 96 + 192 + 384
    state = {k: torch.zeros(shape) for k, shape in manifest.items()}
    result = convert_hrnet_official(state, "fcn_hrnetv2_w48")
    assert result.num_classes == 19
    assert result.overrides["align_corners"] is False and result.overrides["fuse_upsample"] == "bilinear"
    assert result.dropped == ["loss.criterion.weight"]
    # the HRNet-OCR branch's ADE20K / COCO-Stuff files (same keys) are told apart by the caller only
    assert convert_hrnet_official(state, "fcn_hrnetv2_w48", align_corners=True).overrides["align_corners"] is True
    with torch.device("meta"):
        model = create_model("fcn_hrnetv2_w48", num_classes=19, **result.overrides)
    expected = model.state_dict()
    assert {k: tuple(v.shape) for k, v in result.state_dict.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    params = sum(v.numel() for k, v in state.items() if k.startswith("model.") and "running" not in k
                 and "num_batches" not in k)
    assert params == 65_859_379  # the released HRNetV2-W48 Cityscapes model; the README says 65.8M


def test_official_converter_refuses_other_variant() -> None:
    state = {k: torch.zeros(shape) for k, shape in official_manifest("hrnet_w18_small", 19).items()}
    with pytest.raises(ValueError, match="shape mismatches"):
        convert_hrnet_official(state, "fcn_hrnetv2_w18s")
    with pytest.raises(ValueError, match="fcn_hrnetv2_"):
        convert_hrnet_official(state, "segformer_b0")


def to_official(key: str) -> str:
    """seglab key -> official key (the inverse of the converter, written independently for the round trip)."""
    key = key.removeprefix("backbone.")
    head = {"decode_head.fuse.conv.": "last_layer.0.", "decode_head.fuse.norm.": "last_layer.1.",
            "decode_head.classifier.": "last_layer.3."}
    for ours, theirs in head.items():
        if key.startswith(ours):
            return "model." + theirs + key[len(ours):]
    key = re.sub(r"^stem\.conv([12])\.conv\.", r"conv\1.", key)
    key = re.sub(r"^stem\.conv([12])\.norm\.", r"bn\1.", key)
    key = re.sub(r"^transitions\.(\d)\.", lambda m: f"transition{int(m[1]) + 1}.", key)
    key = re.sub(r"^stages\.(\d)\.", lambda m: f"stage{int(m[1]) + 2}.", key)
    key = re.sub(r"\.conv([123])\.conv\.", r".conv\1.", key)  # residual blocks
    key = re.sub(r"\.conv([123])\.norm\.", r".bn\1.", key)
    key = re.sub(r"\.downsample\.conv\.", ".downsample.0.", key)
    key = re.sub(r"\.downsample\.norm\.", ".downsample.1.", key)
    key = re.sub(r"\.conv\.(weight)$", r".0.\1", key)  # transition / fuse (conv, BN) sequentials
    key = re.sub(r"\.norm\.(\w+)$", r".1.\1", key)
    return "model." + key


def test_official_round_trip_w18s_v1() -> None:
    generator = torch.Generator().manual_seed(1)
    model = create_model("fcn_hrnetv2_w18s_v1", num_classes=7, align_corners=False)  # the converter's default
    randomize_batchnorm(model.backbone, generator)
    with torch.no_grad():
        for p in model.decode_head.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    model.eval()
    official = {to_official(k): v.clone() for k, v in model.state_dict().items()}
    official["loss.criterion.weight"] = torch.ones(7)
    # the inverse reproduces the official names exactly (backbone names as timm's, see `official_manifest`)
    assert {k: tuple(v.shape) for k, v in official.items()} == {
        k: s for k, s in official_manifest("hrnet_w18_small", 7).items()}

    result = convert_hrnet_official(official, "fcn_hrnetv2_w18s_v1")
    assert result.num_classes == 7
    restored = create_model("fcn_hrnetv2_w18s_v1", num_classes=result.num_classes, **result.overrides).eval()
    restored.load_state_dict(result.state_dict, strict=True)
    x = torch.randn(1, 3, 70, 90, generator=generator)
    with torch.no_grad():
        expected, got = model(x), restored(x)
    assert got.shape == (1, 7, 18, 23)
    assert torch.equal(got, expected)


def mmseg_manifest(timm_name: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of an mmseg FCN-HRNet checkpoint: the official backbone names under `backbone.`, and
    FCNHead (`num_convs=1`, `kernel_size=1`: ConvModule `convs.0.conv` without bias + `convs.0.bn`) + `conv_seg`."""
    with torch.device("meta"):
        backbone = timm_features(timm_name)
    manifest = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
    width = sum(backbone.feature_info.channels())
    manifest.update({
        "decode_head.convs.0.conv.weight": (width, width, 1, 1),
        **{f"decode_head.convs.0.bn.{n}": (width,) for n in ("weight", "bias", "running_mean", "running_var")},
        "decode_head.convs.0.bn.num_batches_tracked": (),
        "decode_head.conv_seg.weight": (num_classes, width, 1, 1),
        "decode_head.conv_seg.bias": (num_classes,),
    })
    return manifest


@pytest.mark.parametrize(("timm_name", "model_name"), [("hrnet_w18_small_v2", "fcn_hrnetv2_w18s"),
                                                       ("hrnet_w48", "fcn_hrnetv2_w48")])
def test_mmseg_manifest_converts(timm_name: str, model_name: str) -> None:
    """fcn_hr18s (W18-Small-v2) and fcn_hr48 at ADE20K's 150 classes: every key placed, mmseg's numerics set."""
    state = {k: torch.randn(shape) if len(shape) else torch.tensor(0)
             for k, shape in mmseg_manifest(timm_name, 150).items()}
    result = convert_checkpoint(state, "mmseg", model_name)
    assert result.num_classes == 150 and result.dropped == []
    assert result.overrides == {"align_corners": False, "fuse_upsample": "bilinear_scale", "head_conv_bias": False}
    model = create_model(model_name, num_classes=150, **result.overrides)
    model.load_state_dict(result.state_dict, strict=True)
    assert torch.equal(model.decode_head.fuse.conv.weight, state["decode_head.convs.0.conv.weight"])
    assert torch.equal(model.decode_head.classifier.bias, state["decode_head.conv_seg.bias"])
    assert torch.equal(model.state_dict()["backbone.stages.2.0.fuse_layers.0.3.conv.weight"],
                       state["backbone.stage4.0.fuse_layers.0.3.0.weight"])


def test_mmseg_converter_refuses_extra_head_keys() -> None:
    state = {k: torch.zeros(shape) for k, shape in mmseg_manifest("hrnet_w18_small_v2", 19).items()}
    state["auxiliary_head.conv_seg.weight"] = torch.zeros(19, 270, 1, 1)
    with pytest.raises(ValueError, match="auxiliary_head.conv_seg.weight"):
        convert_checkpoint(state, "mmseg", "fcn_hrnetv2_w18s")
