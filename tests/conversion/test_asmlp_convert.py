"""AS-MLP checkpoint conversion: state dicts under the exact key names and shapes of the official classification code
(svip-lab/AS-MLP `models/as_mlp.py`) and of AS-MLP-Semantic-Segmentation (`backbone.*`, `backbone.norm{i}`,
mmseg heads) load strictly and reproduce the network."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from seglab.backbones.asmlp import ASMLP, ASMLP_CONFIGS, ASMLPConfig
from seglab.convert.asmlp import asmlp_backbone_state, variant_from_state


def official_classifier_shapes(config: ASMLPConfig, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official `AS_MLP` classifier, written out from `models/as_mlp.py` (1x1 convs everywhere,
    `MyNorm` = GroupNorm(1, C), PatchMerging's conv without bias, no output norms)."""
    assert config.mlp_ratio == 4.0  # every released model: hidden width 4 * dim
    c0 = config.embed_dim
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (c0, 3, 4, 4), "patch_embed.proj.bias": (c0,),
        "patch_embed.norm.weight": (c0,), "patch_embed.norm.bias": (c0,),
    }
    for i, depth in enumerate(config.depths):
        dim = c0 * 2**i
        for j in range(depth):
            block = f"layers.{i}.blocks.{j}."
            for norm in ("norm1", "norm2", "axial_shift.norm1", "axial_shift.norm2"):
                shapes[block + norm + ".weight"] = shapes[block + norm + ".bias"] = (dim,)
            for conv in ("conv1", "conv2_1", "conv2_2", "conv3"):
                shapes[f"{block}axial_shift.{conv}.weight"] = (dim, dim, 1, 1)
                shapes[f"{block}axial_shift.{conv}.bias"] = (dim,)
            shapes[block + "mlp.fc1.weight"], shapes[block + "mlp.fc1.bias"] = (4 * dim, dim, 1, 1), (4 * dim,)
            shapes[block + "mlp.fc2.weight"], shapes[block + "mlp.fc2.bias"] = (dim, 4 * dim, 1, 1), (dim,)
        if i < len(config.depths) - 1:
            shapes[f"layers.{i}.downsample.norm.weight"] = shapes[f"layers.{i}.downsample.norm.bias"] = (4 * dim,)
            shapes[f"layers.{i}.downsample.reduction.weight"] = (2 * dim, 4 * dim, 1, 1)
    last = c0 * 2 ** (len(config.depths) - 1)
    shapes.update({"norm.weight": (last,), "norm.bias": (last,), "head.weight": (num_classes, last),
                   "head.bias": (num_classes,)})
    return shapes


def official_segmentation_shapes(config: ASMLPConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the AS-MLP-Semantic-Segmentation backbone (`backbone.` prefix, `norm{i}` output norms, no
    classifier)."""
    shapes = {f"backbone.{k}": v for k, v in official_classifier_shapes(config).items()
              if not k.startswith(("norm.", "head."))}
    for i in range(4):
        shapes[f"backbone.norm{i}.weight"] = shapes[f"backbone.norm{i}.bias"] = (config.embed_dim * 2**i,)
    return shapes


# mmseg UPerHead / FCNHead keys the segmentation checkpoints also hold (left to the head converter)
HEAD_KEYS = {"decode_head.conv_seg.weight": (150, 512, 1, 1), "decode_head.bottleneck.bn.running_mean": (512,),
             "auxiliary_head.convs.0.conv.weight": (256, 384, 3, 3), "auxiliary_head.conv_seg.bias": (150,)}


def _randomised(model: nn.Module) -> nn.Module:
    """Non-default values in every norm too, so that a swapped or re-initialised tensor shows up."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    return model.eval()


def _as_layout(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], prefix: str = "") -> dict:
    """Our tensors under the official names of `shapes` (the same names, by the table), checked shape by shape."""
    out = {}
    for key, shape in shapes.items():
        ours = key.removeprefix(prefix)
        assert tuple(state[ours].shape) == shape, key
        out[key] = state[ours].clone()
    return out


def _meta_layout(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def test_model_names_and_shapes_are_the_official_ones():
    config = ASMLP_CONFIGS["t"]
    with torch.device("meta"):
        classifier = ASMLP(config, num_classes=1000)
        backbone = ASMLP(config)
    ours = {k: tuple(v.shape) for k, v in classifier.state_dict().items() if not re.fullmatch(r"norm\d\..*", k)}
    assert ours == official_classifier_shapes(config)
    segmentation = {k.removeprefix("backbone."): v for k, v in official_segmentation_shapes(config).items()}
    assert {k: tuple(v.shape) for k, v in backbone.state_dict().items()} == segmentation


@torch.no_grad()
def test_classification_layout_loads_strictly_with_its_classifier():
    config = ASMLP_CONFIGS["t"]
    reference = _randomised(ASMLP(config, num_classes=1000))
    official = _as_layout(reference.state_dict(), official_classifier_shapes(config))
    state, dropped = asmlp_backbone_state(official, "t", keep_classifier=True)
    assert dropped == []
    model = ASMLP(config, num_classes=1000).eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model.forward_classification(x), reference.forward_classification(x))
    # the output norms the classifier lacks start from GroupNorm's initialisation
    for i in range(4):
        assert torch.equal(state[f"norm{i}.weight"], torch.ones(96 * 2**i))
        assert torch.equal(state[f"norm{i}.bias"], torch.zeros(96 * 2**i))
        reference.get_submodule(f"norm{i}").reset_parameters()
    for ours, theirs in zip(model(x), reference(x), strict=True):
        assert torch.equal(ours, theirs)


def test_classification_layout_drops_the_classifier_by_default():
    config = ASMLP_CONFIGS["t"]
    official = _meta_layout(official_classifier_shapes(config))
    state, dropped = asmlp_backbone_state(official, "t")
    assert sorted(dropped) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    with torch.device("meta"):
        expected = ASMLP(config).state_dict()
    assert list(state) == list(expected)
    assert all(state[k].shape == v.shape for k, v in expected.items())


@torch.no_grad()
def test_segmentation_layout_loads_strictly_and_matches():
    config = ASMLP_CONFIGS["t"]
    reference = _randomised(ASMLP(config))
    checkpoint = _as_layout(reference.state_dict(), official_segmentation_shapes(config), prefix="backbone.")
    checkpoint.update({k: torch.zeros(shape) for k, shape in HEAD_KEYS.items()})
    assert variant_from_state(checkpoint) == "t"
    state, dropped = asmlp_backbone_state(checkpoint, "t")
    assert sorted(dropped) == sorted(HEAD_KEYS)
    assert not any(k.startswith("backbone.") for k in state)
    model = ASMLP(config).eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 61, 45)
    for ours, theirs in zip(model(x), reference(x), strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("variant", ["t", "s", "b"])
def test_variants_are_recognised_and_convert_in_both_layouts(variant):
    config = ASMLP_CONFIGS[variant]
    for shapes in (official_classifier_shapes(config), official_segmentation_shapes(config)):
        source = _meta_layout(shapes)
        assert variant_from_state(source) == variant
        state, _ = asmlp_backbone_state(source, variant)
        with torch.device("meta"):
            # the S segmentation model runs shift 3: no shape depends on it
            model = ASMLP(config, shift_size=3 if variant == "s" else None)
        model.load_state_dict(state, strict=True, assign=True)


def test_errors_name_the_offending_keys():
    config = ASMLP_CONFIGS["t"]
    official = _meta_layout(official_classifier_shapes(config))
    with pytest.raises(ValueError, match=r"layers\.0\.blocks\.0\.attn\.qkv\.weight"):
        asmlp_backbone_state({**official, "layers.0.blocks.0.attn.qkv.weight": torch.empty(1)}, "t")
    with pytest.raises(ValueError, match="shape mismatches.*patch_embed.proj.weight.*expects"):
        asmlp_backbone_state(official, "b")  # a T checkpoint is not AS-MLP-B
    with pytest.raises(ValueError, match=r"missing \(3\): layers\.0\.downsample\.norm\.weight"):
        asmlp_backbone_state({k: v for k, v in official.items() if not k.startswith("layers.0.downsample")}, "t")
    segmentation = _meta_layout(official_segmentation_shapes(config))
    with pytest.raises(ValueError, match="cls_token"):
        asmlp_backbone_state({**segmentation, "cls_token": torch.empty(1)}, "t")
    with pytest.raises(ValueError, match="unknown AS-MLP variant 'l'"):
        asmlp_backbone_state(official, "l")
    with pytest.raises(ValueError, match="matches no published variant"):
        variant_from_state({"patch_embed.proj.weight": torch.empty(64, 3, 4, 4, device="meta")})
