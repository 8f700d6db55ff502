"""SegNeXt-T against the tree written from the official Visual-Attention-Network/SegNeXt code (`official.segnext`):
random weights, the official checkpoint converted with `--source official`, strict load, logits compared.

The original draws new NMF bases from the CPU generator at every forward, in eval too. seglab reproduces that with
`ham_eval_bases="random"` (the generator is seeded right before each forward on both sides); its default
`ham_eval_bases="fixed"` draws the bases once from a generator seeded with `ham_seed`, which for one image is the draw
the original makes after `torch.manual_seed(ham_seed)`.
"""

from __future__ import annotations

import pytest
import torch
from official.segnext.ham_head import segnext_t
from official.segnext.mscan import mscan_t
from testkit import compare, randomize_

from seglab import create_model
from seglab.convert import convert_checkpoint

pytestmark = pytest.mark.reference

INPUT = (75, 93)  # odd sides, not multiples of 32


@pytest.fixture(scope="module")
def models():
    reference = randomize_(segnext_t(num_classes=13), seed=5).eval()
    result = convert_checkpoint({"state_dict": reference.state_dict(), "meta": {}}, "official", "segnext_t")
    assert result.num_classes == 13 and result.dropped == [] and not result.backbone_only
    assert result.overrides == {}  # seglab's defaults are the official numerics (rank 16 for T)

    def build(**options):
        model = create_model("segnext_t", num_classes=13, **result.overrides, **options).eval()
        model.load_state_dict(result.state_dict, strict=True)
        return model

    return reference, build


@torch.no_grad()
def test_random_bases_match_official(models) -> None:
    """`ham_eval_bases="random"` and the original, each seeded right before its forward; batch 2 checks that both
    draw one (B, C, R) tensor in the same order."""
    reference, build = models
    ours = build(ham_eval_bases="random")
    x = torch.randn(2, 3, *INPUT, generator=torch.Generator().manual_seed(6))
    for stage, (a, b) in enumerate(zip(ours.backbone(x), reference.backbone(x), strict=True)):
        compare(a, b, pair=f"segnext/official stage {stage}", tol=1e-4)
    torch.manual_seed(7)
    expected = reference(x)
    torch.manual_seed(7)
    logits = ours(x)
    assert logits.shape == (2, 13, 10, 12)
    compare(logits, expected, pair="segnext/official", tol=1e-4)
    torch.manual_seed(8)  # another draw gives another output, on both sides
    assert (reference(x) - expected).abs().max() > 1e-3


@torch.no_grad()
def test_fixed_bases_are_the_seeded_draw(models) -> None:
    """The default `fixed` bases with `ham_seed=s` equal the original's draw after `torch.manual_seed(s)` for one image,
    whatever the global generator's state when seglab's model runs."""
    reference, build = models
    ours = build(ham_seed=11)
    x = torch.randn(1, 3, *INPUT, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(11)
    expected = reference(x)
    torch.manual_seed(12345)
    compare(ours(x), expected, pair="segnext/official fixed bases", tol=1e-4)


@torch.no_grad()
def test_imagenet_encoder_converts_as_backbone() -> None:
    """`mscan_t.pth`: the MSCAN keys without `backbone.`, with an ImageNet classifier `head.*` (dropped)."""
    reference = randomize_(mscan_t(), seed=10).eval()
    state = {**reference.state_dict(), "head.weight": torch.randn(1000, 256), "head.bias": torch.randn(1000)}
    result = convert_checkpoint(state, "official", "segnext_t")
    assert result.backbone_only and result.dropped == ["head.weight", "head.bias"]
    ours = create_model("segnext_t", num_classes=3, **result.overrides).eval()
    ours.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in result.state_dict.items()}, strict=True)
    x = torch.randn(1, 3, *INPUT, generator=torch.Generator().manual_seed(11))
    for stage, (a, b) in enumerate(zip(ours.backbone(x), reference(x), strict=True)):
        compare(a, b, pair=f"segnext/official mscan_t stage {stage}", tol=1e-4)
