"""The configurations every export test covers (ONNX and torch.export programs): every registered semantic and
refinement model, with tiny options where the published one would take minutes to trace."""

from __future__ import annotations

import torch

import seglab

# (model name, constructor overrides), exported at EXPORT_SIZE. First every family's code paths (`make test` and
# `make test-all`), then each family's other published widths and depths (`make test-zoo`)
FAMILY_EXPORT_MODELS: list[tuple[str, dict]] = [
    ("segformer_b0", {}),
    ("segnext_t", {}),
    ("fcn_hrnetv2_w18s_v1", {}),
    ("upernet_swin_t", {}),  # exports in about a minute: the shifted-window index arithmetic is symbolic
    ("fpn_cyclemlp_b1", {}),
    ("upernet_asmlp_t", {}),
    # plain ViT: ViT-T encoders trained for 32 px (a 2 x 2 grid), so the position embedding is resampled at every
    # checked size; the heads are the published ones
    ("setr_naive_vit_l", {"vit": "t", "layers": (2, 5, 8, 11), "img_size": 32}),
    ("setr_pup_vit_l", {"vit": "t", "layers": (2, 5, 8, 11), "img_size": 32}),
    ("setr_mla_vit_l", {"vit": "t", "layers": (2, 5, 8, 11), "img_size": 32}),
    ("segvit_vit_b", {"vit": "t", "out_indices": (5, 7, 11), "img_size": 32}),
    ("segvit_shrunk_vit_l", {"vit": "t", "out_indices": (3, 11), "shrink_index": 4, "img_size": 32}),
    ("segmenter_vit_t", {"img_size": 32}),
    ("segmenter_vit_s_linear", {"img_size": 32}),
    ("maskformer_r50", {}),  # the semantic path: softmax(class)[..., :-1] x sigmoid(mask), summed over queries
    ("maskformer_swin_t", {}),
    ("bpr_hrnet18s", {}),  # two inputs: the image patch and its coarse mask
]
# the other configurations of each family: the same code at other widths and depths, exported as published
ZOO_EXPORT_MODELS: list[tuple[str, dict]] = [
    *[(f"segformer_b{i}", {}) for i in range(1, 6)],
    *[(f"segnext_{v}", {}) for v in "sbl"],
    *[(f"upernet_swin_{v}", {}) for v in "sbl"],
    *[(f"fcn_hrnetv2_{w}", {}) for w in ("w18s", "w18", "w32", "w48")],
    *[(f"fpn_cyclemlp_b{i}", {}) for i in range(2, 6)],
    *[(f"upernet_asmlp_{v}", {}) for v in "sb"],
    ("segvit_vit_l", {"vit": "t", "out_indices": (5, 7, 11), "img_size": 32}),  # ViT-T: the head is the published
    *[(f"segmenter_vit_{v}", {"img_size": 32}) for v in "sbl"],
    ("maskformer_r101", {}),
    *[(f"maskformer_swin_{v}", {}) for v in "sbl"],
    ("bpr_hrnet48", {}),
]
EXPORT_MODELS = FAMILY_EXPORT_MODELS + ZOO_EXPORT_MODELS
# exported in the fast tier; the rest of FAMILY_EXPORT_MODELS (10-70 s each) in `make test-all`
FAST_EXPORT_MODELS = ("segformer_b0", "fcn_hrnetv2_w18s_v1", "segmenter_vit_t", "segmenter_vit_s_linear")
EXPORT_SIZE = (64, 64)


def export_params() -> list:
    """`EXPORT_MODELS` as pytest parameters with their tier's marks."""
    import pytest

    def marks(name: str) -> tuple:
        if name in FAST_EXPORT_MODELS:
            return ()
        zoo = any(name == other for other, _ in ZOO_EXPORT_MODELS)
        return (pytest.mark.slow, pytest.mark.zoo) if zoo else (pytest.mark.slow,)

    return [pytest.param(m, id=m[0], marks=marks(m[0])) for m in EXPORT_MODELS]


def build_model(name: str, overrides: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.startswith("bpr_"):  # BPR's two classes (background, foreground) are fixed
        return seglab.create_model(name, **overrides).eval()
    return seglab.create_model(name, num_classes=6, **overrides).eval()
