"""Swin-T backbone against timm's `swin_tiny_patch4_window7_224` features with the same random weights, and against
Hugging Face transformers' `SwinBackbone` on sizes that pad every shifted stage.

timm's `features_only` model returns the raw (B, H, W, C) stage outputs: it has no per-stage output norms (its only
norm is the classifier's final one, dropped by the converter). The test therefore applies our randomised `out_norms`
to timm's features with `F.layer_norm` before comparing.

Sizes: timm rolls the map before padding it to window multiples, the original segmentation code (and seglab) pads
first, so the two agree only when no shifted dimension is padded. Both clamp a dimension no larger than the window
(window = map size, no shift there); timm decides this when built, from `img_size`, so timm is built for the test size.
56x112 and 112x224 (non-square, not multiples of 32) give stage maps 14x28, 7x14, 4x7, 2x4 and 28x56, 14x28, 7x14,
4x7: every shifted dimension is a multiple of 7, the clamped ones cover no-shift columns, shrunk non-square windows
(4x7, 2x4) and odd-size patch merging (7 -> 4). A size such as 200x264 pads shifted maps and is not comparable.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from testkit import compare
from torch import nn

from seglab.backbones.swin import SWIN_CONFIGS, SwinTransformer
from seglab.convert.swin import convert_swin_hf, convert_swin_timm

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.reference


def _randomize(model: nn.Module, seed: int) -> None:
    """Random values everywhere, LayerNorm affines and bias tables included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("relative_position_bias_table"):
                t.copy_(torch.randn(t.shape, generator=gen))
            elif name.endswith("bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.ndim == 1:  # LayerNorm scale
                t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(math.prod(t.shape[1:])))


def _embed_table(table: torch.Tensor, window: tuple[int, int], full: int, gen: torch.Generator) -> torch.Tensor:
    """timm builds a block's table for its clamped window (`(2wh-1)(2ww-1)` rows); seglab keeps the full `(2w-1)^2`
    table and reads the clamped window's offsets from it. Place timm's rows at those offsets; the other rows get
    random values, which must not reach the output."""
    heads = table.shape[1]
    out = torch.randn((2 * full - 1) ** 2, heads, generator=gen) * 10.0
    for dy in range(-(window[0] - 1), window[0]):
        for dx in range(-(window[1] - 1), window[1]):
            src = (dy + window[0] - 1) * (2 * window[1] - 1) + dx + window[1] - 1
            out[(dy + full - 1) * (2 * full - 1) + dx + full - 1] = table[src]
    return out


@pytest.mark.parametrize("size", [(56, 112), (112, 224)])
@torch.no_grad()
def test_features_match_timm(size):
    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, features_only=True,
                                  img_size=size, strict_img_size=False).eval()
    _randomize(reference, seed=1)
    source = reference.state_dict()
    assert not any("norm" in k and "blocks" not in k and "downsample" not in k and "patch_embed" not in k
                   for k in source), "timm features_only grew per-stage norms; compare without F.layer_norm"

    converted = convert_swin_timm(source)
    gen = torch.Generator().manual_seed(5)
    clamped = 0
    for name, module in reference.named_modules():
        if name.endswith(".attn") and tuple(module.window_size) != (7, 7):
            stage, block = name.split(".")[0].removeprefix("layers_"), name.split(".")[2]
            key = f"backbone.stages.{stage}.blocks.{block}.attn.relative_position_bias_table"
            converted[key] = _embed_table(converted[key], tuple(module.window_size), 7, gen)
            clamped += 1
    assert clamped > 0  # the sizes are chosen to exercise shrunk windows

    ours = SwinTransformer(SWIN_CONFIGS["t"], drop_path_rate=0.0).eval()
    _randomize(ours.out_norms, seed=2)
    state = {k.removeprefix("backbone."): v for k, v in converted.items()}
    state.update({f"out_norms.{k}": v for k, v in ours.out_norms.state_dict().items()})
    ours.load_state_dict(state, strict=True)

    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    expected = reference(image)  # (B, H, W, C) per stage
    actual = ours(image)
    assert len(actual) == len(expected) == 4
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        norm = ours.out_norms[str(i)]
        e = F.layer_norm(e, norm.normalized_shape, norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
        assert a.shape == e.shape == (1, 96 * 2**i, math.ceil(size[0] / 4 / 2**i), math.ceil(size[1] / 4 / 2**i))
        compare(a, e, pair=f"swin/timm swin_tiny_patch4_window7_224 {size} stage {i}")


def test_timm_state_dict_converts_key_for_key():
    """The whole classifier (not features_only) converts too: head and final norm dropped, merging moved."""
    with torch.device("meta"):
        reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
        ours = SwinTransformer(SWIN_CONFIGS["t"])
    converted = convert_swin_timm(reference.state_dict())
    expected = {f"backbone.{k}": tuple(v.shape) for k, v in ours.state_dict().items() if not k.startswith("out_norms")}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert "backbone.stages.0.downsample.reduction.weight" in converted  # timm's layers.1.downsample
    with pytest.raises(ValueError, match="not understood"):
        convert_swin_timm({**reference.state_dict(), "layers.0.blocks.0.gamma": torch.zeros(1)})


# --- Hugging Face transformers: the padded shifted-window path ----------------------------------------------------


@torch.no_grad()
def test_features_match_transformers_on_padded_sizes():
    """HF pads before the cyclic shift, as the original segmentation code and seglab do, so it checks the padded
    SW-MSA path that timm cannot: 260x292 gives stage maps 65x73, 33x37, 17x19, 9x10, none a multiple of 7 and all
    larger than the window (HF fails on maps smaller than its window and clamps statefully at exactly 7)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                     out_features=["stage1", "stage2", "stage3", "stage4"])
    reference = transformers.SwinBackbone(config).eval()
    _randomize(reference, seed=4)
    converted = convert_swin_hf(reference.state_dict())
    ours = SwinTransformer(SWIN_CONFIGS["t"], drop_path_rate=0.0).eval()
    ours.load_state_dict({k.removeprefix("backbone."): v for k, v in converted.items()}, strict=True)

    image = torch.randn(1, 3, 260, 292, generator=torch.Generator().manual_seed(0))
    expected = reference(image).feature_maps
    actual = ours(image)
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        compare(a, e, pair=f"swin/hf SwinBackbone (260, 292) stage {i}")


def test_transformers_4x_names_convert_like_5x():
    """The Hub / transformers 4.x spelling (`attention.self.query`, `intermediate.dense`, ...) gives the same result."""
    transformers = pytest.importorskip("transformers")
    config = transformers.SwinConfig(embed_dim=16, depths=[2, 2], num_heads=[1, 2], out_features=["stage1", "stage2"])
    state = transformers.SwinBackbone(config).state_dict()
    renames = [(".attention.q_proj.", ".attention.self.query."), (".attention.k_proj.", ".attention.self.key."),
               (".attention.v_proj.", ".attention.self.value."), (".attention.o_proj.", ".attention.output.dense."),
               (".attention.relative_position_bias.", ".attention.self."), (".mlp.fc1.", ".intermediate.dense."),
               (".mlp.fc2.", ".output.dense.")]
    old = {}
    for key, value in state.items():
        for new, legacy in renames:
            key = key.replace(new, legacy)
        old["backbone." + key.removeprefix("swin.")] = value
    old["backbone.encoder.layers.0.blocks.0.attention.self.relative_position_index"] = torch.zeros(49, 49)
    old["decode_head.classifier.weight"] = torch.zeros(3, 8, 1, 1)
    new, legacy = convert_swin_hf(state), convert_swin_hf(old)
    assert new.keys() == legacy.keys()
    assert all(torch.equal(new[k], legacy[k]) for k in new)
    qkv = new["backbone.stages.1.blocks.1.attn.qkv.weight"]
    assert qkv.shape == (96, 32)
    assert torch.equal(qkv[32:64], state["swin.encoder.layers.1.blocks.1.attention.k_proj.weight"])


@torch.no_grad()
def test_imagenet_classifier_converts_to_upernet_pretrained_backbone(tmp_path):
    """`seglab convert --source official --model upernet_swin_t` on timm's ImageNet classifier (what the recipes'
    `model.pretrained` starts from; the official `swin_tiny_patch4_window7_224.pth` holds the same weights with merging
    at the end of each stage): backbone-only weights, output norms at LayerNorm's initialisation, loaded by the run's
    loader; the backbone gives timm's stage features, layer-normed. 224x224: stage maps 56, 28, 14, 7 (no window
    is clamped differently by timm and seglab)."""
    from seglab.checkpoint import load_backbone_weights, save_weights
    from seglab.convert import convert_checkpoint
    from seglab.registry import create_model

    classifier = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    _randomize(classifier, seed=6)
    result = convert_checkpoint(classifier.state_dict(), "official", "upernet_swin_t")
    assert result.backbone_only and result.num_classes is None
    assert {"head.fc.weight", "norm.weight"} <= set(result.dropped)
    path = tmp_path / "swin_t.safetensors"
    save_weights(path, result.state_dict, "upernet_swin_t", None, result.overrides, extra={"backbone_only": "true"})
    ours = create_model("upernet_swin_t", num_classes=5).eval()
    load_backbone_weights(ours, path)

    features = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, features_only=True).eval()
    renamed = {k.replace("layers.", "layers_", 1): v for k, v in classifier.state_dict().items()}
    features.load_state_dict({k: v for k, v in renamed.items() if k in features.state_dict()}, strict=True)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    for i, (a, e) in enumerate(zip(ours.backbone(image), features(image), strict=True)):
        e = F.layer_norm(e, e.shape[-1:], eps=ours.backbone.out_norms[str(i)].eps).permute(0, 3, 1, 2)
        compare(a, e, pair=f"upernet_swin/timm ImageNet classifier (model.pretrained) stage {i}")
