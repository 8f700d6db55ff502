"""UperNet-AS-MLP-T against trees written from the official code: the segmentor of svip-lab/AS-MLP-Semantic-Segmentation
(`official.as_mlp_semantic_segmentation`; checkpoint `{"state_dict": ...}`) and the ImageNet classifier of
svip-lab/AS-MLP (`official.as_mlp`; checkpoint `{"model": ...}`, converted as backbone-only weights). Random weights,
converted with `--source official`, strict load, outputs compared.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from official.as_mlp.as_mlp import as_mlp_t
from official.as_mlp_semantic_segmentation.asmlp import upernet_asmlp_t
from testkit import compare, compare_segmentor, randomize_

from seglab import create_model
from seglab.backbones.asmlp import ASMLP, ASMLP_CONFIGS
from seglab.convert import convert_checkpoint
from seglab.convert.asmlp import asmlp_backbone_state

pytestmark = pytest.mark.reference

INPUT = (1, 3, 75, 93)  # odd sides; stages 19x24, 10x12, 5x6, 3x3 (odd maps padded before merging)


def convert_and_compare(channels: int, aux_channels: int, seed: int) -> None:
    reference = randomize_(upernet_asmlp_t(num_classes=9, channels=channels, aux_channels=aux_channels), seed).eval()
    result = convert_checkpoint({"state_dict": reference.state_dict(), "meta": {}}, "official", "upernet_asmlp_t")
    assert result.num_classes == 9 and result.dropped == [] and not result.backbone_only
    assert result.overrides.get("head_channels", 512) == channels
    assert result.overrides.get("aux_channels", 256) == aux_channels
    ours = create_model("upernet_asmlp_t", num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)

    x = torch.randn(INPUT, generator=torch.Generator().manual_seed(seed + 1))
    logits = compare_segmentor(ours, reference, x, pair="upernet_asmlp/official", tol=1e-4)
    assert logits.shape == (1, 9, 19, 24)


def test_upernet_asmlp_matches_official() -> None:
    """Narrow heads (128 / 64 channels, read from the checkpoint into `head_channels` / `aux_channels` overrides)."""
    convert_and_compare(channels=128, aux_channels=64, seed=50)


@pytest.mark.slow
def test_upernet_asmlp_published_heads_match_official() -> None:
    convert_and_compare(channels=512, aux_channels=256, seed=51)


@torch.no_grad()
def test_imagenet_classifier_converts_as_backbone() -> None:
    """The classification checkpoint (`{"model": ...}`, no output norms, classifier `norm` / `head`) as backbone-only
    weights: each stage's output equals the classifier's pre-merging map through a fresh GroupNorm(1, C); with the
    classifier kept, the ImageNet logits match."""
    reference = randomize_(as_mlp_t(img_size=96, num_classes=10), seed=52).eval()
    checkpoint = {"model": reference.state_dict(), "epoch": 299}
    result = convert_checkpoint(checkpoint, "official", "upernet_asmlp_t")
    assert result.backbone_only and result.num_classes is None
    assert sorted(result.dropped) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    ours = create_model("upernet_asmlp_t", num_classes=4, **result.overrides).eval()
    ours.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in result.state_dict.items()}, strict=True)

    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(53))
    for stage, (a, b) in enumerate(zip(ours.backbone(x), reference.stage_outputs(x), strict=True)):
        compare(a, F.group_norm(b, 1), pair=f"upernet_asmlp/official imagenet stage {stage}", tol=1e-4)

    state, dropped = asmlp_backbone_state(checkpoint["model"], "t", keep_classifier=True)
    assert dropped == []
    classifier = ASMLP(ASMLP_CONFIGS["t"], num_classes=10).eval()
    classifier.load_state_dict(state, strict=True)
    compare(classifier.forward_classification(x), reference(x), pair="upernet_asmlp/official imagenet logits",
            tol=1e-4)
