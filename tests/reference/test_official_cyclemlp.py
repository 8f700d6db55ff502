"""CycleMLP against the official ShoufaChen/CycleMLP code (`official.cyclemlp`, written from `cycle_mlp.py`, Cycle FC
on torchvision's `deform_conv2d` as in the original) with the same random weights, converted by `seglab.convert`
(source `official`, model `fpn_cyclemlp_b1`).

The repository released no segmentation model, only the ImageNet classifiers and the dense-prediction backbones
`CycleMLP_B*_feat` (each stage's last block output through its own LayerNorm `norm{0,2,4,6}`, before the next
downsampling), so the comparison is of the backbone features at the four strides:
- a `CycleMLP_B1_feat` state dict (random output norms included) under the `backbone.` prefix of an mm-framework
  segmentor;
- a released-style ImageNet checkpoint (`CycleMLP_B1` with `norm` / `head`, wrapped as `{"model": ...}`), whose
  conversion must equal what the official code does with it: a non-strict load into `CycleMLP_B1_feat`, which leaves
  the output norms at their initialisation.
Every parameter and statistic is random (`testkit.randomize_`); the fixed Cycle FC offsets are restored after it (they
are a buffer, checked by the converter). 75x93 gives odd maps at every stage (19x23, 10x12, 5x6, 3x3).
"""

from __future__ import annotations

import pytest
import torch
from official.cyclemlp.cycle_mlp import CycleFC, cycle_mlp
from testkit import compare, randomize_

from seglab import create_model
from seglab.convert import convert_checkpoint

pytest.importorskip("torchvision")

pytestmark = pytest.mark.reference

SIZE = (75, 93)


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    randomize_(model.eval(), seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, CycleFC):
                module.offset.copy_(module.gen_offset())
    return model


def _compare_features(reference: torch.nn.Module, result, label: str) -> None:
    assert result.backbone_only and result.num_classes is None
    ours = create_model("fpn_cyclemlp_b1", num_classes=3, **result.overrides).eval()
    ours.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in result.state_dict.items()}, strict=True)
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        actual = ours.backbone(x)
    assert [tuple(f.shape[-2:]) for f in expected] == [(19, 23), (10, 12), (5, 6), (3, 3)]
    for stage, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert e.std() > 0.1
        compare(a, e, pair=f"cyclemlp/official B1 {label} stage {stage}")


def test_dense_prediction_backbone_matches_the_official_code():
    reference = _randomized(cycle_mlp("B1", fork_feat=True), seed=31)
    checkpoint = {f"backbone.{k}": v for k, v in reference.state_dict().items()}
    _compare_features(reference, convert_checkpoint(checkpoint, "official", "fpn_cyclemlp_b1"), "_feat backbone")


def test_imagenet_checkpoint_matches_the_official_non_strict_load():
    classifier = _randomized(cycle_mlp("B1", num_classes=10), seed=32)
    result = convert_checkpoint({"model": classifier.state_dict()}, "official", "fpn_cyclemlp_b1")
    assert sorted(result.dropped) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    reference = cycle_mlp("B1", fork_feat=True).eval()
    missing, unexpected = reference.load_state_dict(classifier.state_dict(), strict=False)
    assert sorted(missing) == sorted(f"norm{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias"))
    assert sorted(unexpected) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    _compare_features(reference, result, "ImageNet checkpoint")
