"""Helpers shared by the reference comparisons: random weights that exercise every term, and a checked max difference.

`compare(ours, ref, pair=..., tol=...)` asserts the largest absolute difference and, when `SEGLAB_DIFF_REPORT` names
a file, appends `{"pair": ..., "max_abs_diff": ..., "ref_range": ...}` to it (one JSON object a line), so a run of
the suite lists the difference measured for every (family, source) pair. `normal_` refills the few tensors that
`randomize_`'s fan-in rule leaves at an atypical scale (position embeddings, class tokens, queries);
`compare_segmentor` compares a seglab segmentor with an mmseg 0.x-style reference stage by stage.
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random values in every parameter and buffer, normalisation statistics included, so that no term is trivially
    zero or one: conv/linear weights ~ N(0, 1/fan_in), biases and running means ~ N(0, 0.1^2), norm scales around 1,
    running variances in [0.5, 1.5]. Integer buffers (batch counters, index tables) are left alone."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("bias", "running_mean")):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.ndim == 1:  # LayerNorm / BatchNorm scale, layer scales
                t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=gen))
            else:
                fan_in = math.prod(t.shape[1:]) if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(fan_in))
    return model


def compare(ours: torch.Tensor, ref: torch.Tensor, pair: str, tol: float = 1e-4) -> float:
    """Asserts `max |ours - ref| <= tol` (same shape) and records the difference for `pair`, e.g. "segformer/mmseg"."""
    assert ours.shape == ref.shape, f"{pair}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    ours, ref = ours.detach().double(), ref.detach().double()
    diff = (ours - ref).abs().max().item()
    ref_range = (ref.max() - ref.min()).item()
    path = os.environ.get("SEGLAB_DIFF_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"pair": pair, "max_abs_diff": diff, "ref_range": ref_range,
                                "shape": list(ref.shape)}) + "\n")
    assert diff <= tol, f"{pair}: max |difference| {diff:.3g} > {tol:g} (reference range {ref_range:.3g})"
    return diff


@torch.no_grad()
def normal_(seed: int, *tensors: tuple[torch.Tensor, float]) -> None:
    """Refills each `(tensor, std)` with N(0, std^2), in the order given, from one generator seeded `seed`."""
    gen = torch.Generator().manual_seed(seed)
    for t, std in tensors:
        t.normal_(0, std, generator=gen)


@torch.no_grad()
def compare_segmentor(ours: nn.Module, ref: nn.Module, x: torch.Tensor, pair: str, tol: float = 1e-4) -> torch.Tensor:
    """Compares, on `x`, the backbone's stage outputs (`"{pair} stage {i}"`), the first auxiliary head (seglab's
    `aux_heads[0]` against the reference's `auxiliary_head`, `"{pair} auxiliary head"`) and the logits (`pair`) of a
    seglab segmentor and an mmseg 0.x-style `EncoderDecoder` (`backbone`, `auxiliary_head`; `forward` = the decode
    head's logits, as `official.mmcv_lite`'s); returns seglab's logits."""
    ours_features, ref_features = ours.backbone(x), ref.backbone(x)
    for stage, (a, b) in enumerate(zip(ours_features, ref_features, strict=True)):
        compare(a, b, pair=f"{pair} stage {stage}", tol=tol)
    compare(ours.aux_heads[0](ours_features), ref.auxiliary_head(ref_features), pair=f"{pair} auxiliary head", tol=tol)
    logits = ours(x)
    compare(logits, ref(x), pair=pair, tol=tol)
    return logits


def timm_vit_features(reference, image, backbone):
    """A timm ViT's intermediate outputs at `backbone.out_indices`, as seglab's `VisionTransformer` returns them: the
    final norm applied to the last output only when the seglab backbone has one."""
    indices = backbone.out_indices
    expected = reference.forward_intermediates(image, indices=list(indices), norm=False, intermediates_only=True)
    if backbone.norm is not None:
        expected[-1] = reference.forward_intermediates(image, indices=[indices[-1]], norm=True,
                                                       intermediates_only=True)[0]
    return expected
