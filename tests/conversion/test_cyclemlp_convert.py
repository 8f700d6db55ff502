"""Official CycleMLP checkpoints -> seglab `CycleMLP`: state dicts under the exact official key names and shapes
(built from our model through an independent rename table), strict loads, and outputs against a functional
re-statement of the official forward that runs torchvision's `deform_conv2d` on the official keys."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from seglab.backbones.cyclemlp import CYCLEMLP_CONFIGS, CycleMLP
from seglab.convert import convert_checkpoint
from seglab.convert.cyclemlp import convert_cyclemlp_official, cyclemlp_backbone_state, variant_from_state
from seglab.registry import create_model

# seglab key -> official key (`CycleNet`: network = [stage0, down0, stage1, down1, stage2, down2, stage3])
OFFICIAL_NAMES = [
    (r"patch_embed\.proj\.(weight|bias)", lambda m: f"patch_embed.proj.{m[1]}"),
    (r"stages\.(\d)\.blocks\.(\d+)\.(.+)", lambda m: f"network.{2 * int(m[1])}.{m[2]}.{m[3]}"),
    (r"stages\.(\d)\.downsample\.proj\.(weight|bias)", lambda m: f"network.{2 * int(m[1]) - 1}.proj.{m[2]}"),
    (r"out_norms\.(\d)\.(weight|bias)", lambda m: f"norm{2 * int(m[1])}.{m[2]}"),
    (r"(norm|head)\.(weight|bias)", lambda m: f"{m[1]}.{m[2]}"),
]


def to_official(state: dict[str, torch.Tensor], imagenet: bool) -> dict[str, torch.Tensor]:
    """Our state dict under the official names; an ImageNet checkpoint has no output norms `norm{0,2,4,6}`."""
    out = {}
    for key, value in state.items():
        if imagenet and key.startswith("out_norms."):
            continue
        for pattern, name in OFFICIAL_NAMES:
            match = re.fullmatch(pattern, key)
            if match:
                out[name(match)] = value.clone()
                break
        else:
            raise AssertionError(f"test table misses {key}")
    return out


@pytest.fixture(scope="module")
def b1_classifier() -> CycleMLP:
    torch.manual_seed(0)
    model = CycleMLP(CYCLEMLP_CONFIGS["b1"], num_classes=1000).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".norm" in name or name.startswith(("norm.", "out_norms.")):
                param.normal_(0.0, 0.1)  # no zero biases or unit norms that would hide a swapped tensor
    return model


def official_forward(state: dict[str, torch.Tensor], x: torch.Tensor, depths: tuple[int, ...]) -> torch.Tensor:
    """The official `CycleNet` classifier forward, restated on official keys: stem, stages with `deform_conv2d`
    Cycle FCs and the (B, C, 3) reweighting, 3x3 transitions, `norm`, mean over tokens, `head`."""

    def cycle_fc(prefix: str, t: torch.Tensor) -> torch.Tensor:
        nchw = t.permute(0, 3, 1, 2)
        batch, _, height, width = nchw.shape
        offset = state[f"{prefix}.offset"].expand(batch, -1, height, width)
        return deform_conv2d(nchw, offset, state[f"{prefix}.weight"], state[f"{prefix}.bias"]).permute(0, 2, 3, 1)

    def layer_norm(prefix: str, t: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(t, t.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], 1e-5)

    def linear(prefix: str, t: torch.Tensor) -> torch.Tensor:
        return F.linear(t, state[f"{prefix}.weight"], state.get(f"{prefix}.bias"))

    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=4, padding=2)
    t = t.permute(0, 2, 3, 1)
    for index in range(7):
        if index % 2:
            conv = F.conv2d(t.permute(0, 3, 1, 2), state[f"network.{index}.proj.weight"],
                            state[f"network.{index}.proj.bias"], stride=2, padding=1)
            t = conv.permute(0, 2, 3, 1)
            continue
        for j in range(depths[index // 2]):
            p = f"network.{index}.{j}"
            y = layer_norm(f"{p}.norm1", t)
            batch, _, _, channels = y.shape
            h, w, c = cycle_fc(f"{p}.attn.sfc_h", y), cycle_fc(f"{p}.attn.sfc_w", y), linear(f"{p}.attn.mlp_c", y)
            a = (h + w + c).permute(0, 3, 1, 2).flatten(2).mean(2)
            a = linear(f"{p}.attn.reweight.fc2", F.gelu(linear(f"{p}.attn.reweight.fc1", a)))
            a = a.reshape(batch, channels, 3).permute(2, 0, 1).softmax(dim=0).unsqueeze(2).unsqueeze(2)
            t = t + linear(f"{p}.attn.proj", h * a[0] + w * a[1] + c * a[2])
            y = layer_norm(f"{p}.norm2", t)
            t = t + linear(f"{p}.mlp.fc2", F.gelu(linear(f"{p}.mlp.fc1", y)))
    tokens = layer_norm("norm", t.flatten(1, 2))
    return linear("head", tokens.mean(1))


def test_official_imagenet_manifest(b1_classifier):
    official = to_official(b1_classifier.state_dict(), imagenet=True)
    shapes = {k: tuple(v.shape) for k, v in official.items()}
    assert shapes["patch_embed.proj.weight"] == (64, 3, 7, 7)
    assert shapes["network.0.0.attn.sfc_h.offset"] == (1, 128, 1, 1)
    assert shapes["network.4.3.attn.sfc_w.weight"] == (320, 320, 1, 1)
    assert shapes["network.4.3.attn.reweight.fc1.weight"] == (80, 320)
    assert shapes["network.4.3.attn.reweight.fc2.weight"] == (960, 80)
    assert shapes["network.1.proj.weight"] == (128, 64, 3, 3)
    assert shapes["network.5.proj.bias"] == (512,)
    assert shapes["network.6.1.mlp.fc1.weight"] == (2048, 512)
    assert shapes["norm.weight"] == (512,) and shapes["head.weight"] == (1000, 512)
    assert "network.0.0.attn.mlp_c.bias" not in shapes
    assert not any(re.fullmatch(r"norm\d\..*", k) for k in shapes)
    # per block: norm1 2, mlp_c 1, two Cycle FCs 3 each, reweight 4, proj 2, norm2 2, mlp 4 = 21 tensors
    assert len(official) == 2 + 21 * 10 + 2 * 3 + 4


def test_imagenet_checkpoint_loads_strictly_and_matches_the_official_forward(b1_classifier):
    official = to_official(b1_classifier.state_dict(), imagenet=True)
    assert variant_from_state(official) == "b1"
    converted, dropped = cyclemlp_backbone_state(official, "b1", keep_classifier=True)
    assert dropped == []
    model = CycleMLP(CYCLEMLP_CONFIGS["b1"], num_classes=1000).eval()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 61, 70)
    with torch.no_grad():
        ours = model.forward_classification(x)
        torch.testing.assert_close(ours, b1_classifier.forward_classification(x), rtol=0, atol=0)
        torch.testing.assert_close(ours, official_forward(official, x, (2, 2, 4, 2)), rtol=1e-4, atol=1e-4)
    for key in ("out_norms.0.weight", "out_norms.3.weight"):
        assert torch.equal(converted[key], torch.ones_like(converted[key]))  # filled: the source has no output norms


def test_imagenet_checkpoint_for_dense_prediction_drops_the_classifier(b1_classifier):
    official = to_official(b1_classifier.state_dict(), imagenet=True)
    converted, dropped = cyclemlp_backbone_state(official, "b1")
    assert sorted(dropped) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    backbone = CycleMLP(CYCLEMLP_CONFIGS["b1"]).eval()
    backbone.load_state_dict(converted, strict=True)
    assert torch.equal(converted["out_norms.2.bias"], torch.zeros(320))
    result = convert_cyclemlp_official(official, "fpn_cyclemlp_b1", "CycleMLP_B1.pth")
    assert result.backbone_only and result.num_classes is None and result.overrides == {}
    assert sorted(result.dropped) == sorted(dropped)
    assert result.state_dict.keys() == {f"backbone.{k}" for k in converted}
    assert torch.equal(result.state_dict["backbone.stages.3.blocks.1.attn.sfc_h.weight"],
                       official["network.6.1.attn.sfc_h.weight"])


def test_dense_prediction_layout_maps_output_norms_and_drops_heads(b1_classifier):
    source = CycleMLP(CYCLEMLP_CONFIGS["b1"]).eval()
    with torch.no_grad():
        for norm in source.out_norms.values():
            norm.weight.normal_()
            norm.bias.normal_()
    official = {f"backbone.{k}": v for k, v in to_official(source.state_dict(), imagenet=False).items()}
    assert "backbone.norm6.weight" in official and "backbone.norm2.bias" in official
    official["decode_head.conv_seg.weight"] = torch.zeros(19, 128, 1, 1)
    official["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 64, 1, 1)
    assert variant_from_state(official) == "b1"
    converted, dropped = cyclemlp_backbone_state(official, "b1")
    assert sorted(dropped) == ["decode_head.conv_seg.weight", "neck.lateral_convs.0.conv.weight"]
    model = CycleMLP(CYCLEMLP_CONFIGS["b1"]).eval()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 45, 38)
    with torch.no_grad():
        for ours, theirs in zip(model(x), source(x), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    with pytest.raises(ValueError, match="segmentation-head keys"):
        convert_cyclemlp_official(official, "fpn_cyclemlp_b1")


@pytest.mark.parametrize("variant", sorted(CYCLEMLP_CONFIGS))
def test_variant_from_state_reads_every_variant(variant):
    with torch.device("meta"):
        state = CycleMLP(CYCLEMLP_CONFIGS[variant], num_classes=1000).state_dict()
    assert variant_from_state(to_official(state, imagenet=True)) == variant


def test_errors_name_the_offending_key(b1_classifier):
    official = to_official(b1_classifier.state_dict(), imagenet=True)
    unknown = {**official, "network.2.0.attn.extra.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"network\.2\.0\.attn\.extra\.weight"):
        cyclemlp_backbone_state(unknown, "b1")
    reshaped = {**official, "network.4.0.mlp.fc1.weight": torch.zeros(640, 320)}
    with pytest.raises(ValueError, match=r"network\.4\.0\.mlp\.fc1\.weight.*\(1280, 320\)"):
        cyclemlp_backbone_state(reshaped, "b1")
    shifted = {**official, "network.0.1.attn.sfc_w.offset": -official["network.0.1.attn.sfc_w.offset"]}
    with pytest.raises(ValueError, match=r"network\.0\.1\.attn\.sfc_w\.offset"):
        cyclemlp_backbone_state(shifted, "b1")
    with pytest.raises(ValueError, match="CycleMLP-B1 checkpoint"):
        convert_cyclemlp_official(official, "fpn_cyclemlp_b2")
    with pytest.raises(ValueError, match="fpn_cyclemlp_b1"):
        convert_cyclemlp_official(official, "segformer_b1")
    with pytest.raises(ValueError, match="never released"):
        cyclemlp_backbone_state(official, "t")


def test_fpn_cyclemlp_takes_an_imagenet_cyclemlp_checkpoint():
    """Through `convert_checkpoint` into the registered Semantic-FPN model: backbone keys only, equal features."""
    torch.manual_seed(0)
    classifier = CycleMLP(CYCLEMLP_CONFIGS["b1"], num_classes=1000)
    official = to_official(classifier.state_dict(), imagenet=True)
    result = convert_checkpoint(official, "official", "fpn_cyclemlp_b1")
    assert result.backbone_only
    model = create_model("fpn_cyclemlp_b1", num_classes=5)
    missing, unexpected = model.load_state_dict(result.state_dict, strict=False)
    assert unexpected == [] and all(k.startswith("decode_head.") for k in missing)
    x = torch.randn(1, 3, 64, 96)
    model.eval()
    classifier.eval()
    with torch.no_grad():
        ours, theirs = model.backbone(x), classifier(x)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs, strict=True))
