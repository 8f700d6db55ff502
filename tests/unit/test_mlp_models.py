"""The registered MLP-backbone segmentation models: Semantic FPN + CycleMLP-B1..B5 and UperNet + AS-MLP-T/S/B.

Parameter counts are the papers' (CycleMLP Table 5: Semantic FPN on ADE20K; AS-MLP-Semantic-Segmentation README:
UperNet with the auxiliary head), restated here.
"""

from __future__ import annotations

import pytest
import torch

from seglab.registry import create_model, get_entry

PUBLISHED_M = {
    "fpn_cyclemlp_b1": 18.9, "fpn_cyclemlp_b2": 30.6, "fpn_cyclemlp_b3": 42.1, "fpn_cyclemlp_b4": 55.6,
    "fpn_cyclemlp_b5": 79.4, "upernet_asmlp_t": 60, "upernet_asmlp_s": 81, "upernet_asmlp_b": 121,
}


@pytest.mark.parametrize("name", list(PUBLISHED_M))
def test_parameter_counts_match_the_papers(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=150)
    params = sum(p.numel() for p in model.parameters())
    digits = 1 if name.startswith("fpn_") else 0
    assert round(params / 1e6, digits) == PUBLISHED_M[name], params
    assert get_entry(name).published_params_m == PUBLISHED_M[name]


def test_asmlp_segmentation_settings_per_variant():
    """The segmentation configs: drop path 0.3 / 0.3 / 0.5, shift 5 / 3 / 5 (S's config sets 3 despite its name)."""
    with torch.device("meta"):
        models = {v: create_model(f"upernet_asmlp_{v}") for v in "tsb"}
    shifts = {v: {m.shift_size for m in model.backbone.modules() if hasattr(m, "shift_size")}
              for v, model in models.items()}
    assert shifts == {"t": {5}, "s": {3}, "b": {5}}
    with torch.device("meta"):
        assert {m.shift_size for m in create_model("upernet_asmlp_s", shift_size=5).backbone.modules()
                if hasattr(m, "shift_size")} == {5}
    rates = {v: max(float(getattr(m, "drop_prob", 0.0)) for m in model.modules()) for v, model in models.items()}
    assert rates == pytest.approx({"t": 0.3, "s": 0.3, "b": 0.5})


@pytest.mark.parametrize("name", ["fpn_cyclemlp_b1", "upernet_asmlp_t"])
@pytest.mark.parametrize("size", [(77, 50), (64, 96)])
def test_forward_shapes_train_and_eval(name, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    x = torch.randn(2, 3, *size)
    model.train()
    logits = model(x)
    logits.mean().backward()
    # the auxiliary head feeds the loss only (the trainer reads it), not the returned logits
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("aux_heads."))
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape[:2] == (2, 5) and abs(out.shape[2] - size[0] / 4) < 1.5 and abs(out.shape[3] - size[1] / 4) < 1.5
    assert torch.isfinite(out).all()
