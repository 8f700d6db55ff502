"""Every mmseg converter against mmsegmentation 1.2.2's own code (the side environment of `mmseg_env.py`).

For each family, `mmseg_runner.py` builds the model of a published mmseg config (SyncBN as BN; shrunk only where the
seglab model takes the same options), randomises every parameter and buffer (`testkit.randomize_`, BN statistics
included, position/class embeddings O(1)), and runs `decode_head.forward(extract_feat(x))` (the encoder-decoder's
`_forward`: logits at the head's stride) and each auxiliary head on a 1x3x75x93 input: odd on both sides and no multiple
of 32, so that every padding, odd-size resize and position-embedding resampling path runs. The test converts the state
dict exactly as mmseg saved it with `convert_checkpoint(..., "mmseg", ...)` (for the shrunk SETR, `convert_setr_mmseg`
with the blocks the heads read, which no tensor shape tells), loads it strictly into `create_model(name,
num_classes=..., **result.overrides)` and compares the backbone (and neck) features, the logits (`testkit.compare`, pair
`<family>/mmseg`) and the auxiliary heads. HRNet's BN statistics are measured on random data (`calibrate_bn`), so that
its activations stay O(1).

`test_imagenet_vit_converts_as_mmseg_loads_it`: ImageNet ViT files (`--source mmseg`, backbone-only) against mmseg's
own loading (`init_weights`: the position embedding resized to the config's grid, `strict=False`).

The mmseg side of every selected test runs in one process, once: its outputs are cached in `.cache/mmseg-runs/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from mmseg_env import mmseg_python, prefetch_mmseg, run_mmseg
from testkit import compare

from seglab import create_model
from seglab.convert import convert_checkpoint
from seglab.convert.setr import convert_setr_mmseg

pytestmark = [pytest.mark.reference, pytest.mark.mmseg]

INPUT_SHAPE = [1, 3, 75, 93]
TOL = 1e-4

# SETR is ViT-L (300M parameters) in every published config; mmseg's and seglab's ViT take the same width / depth /
# layer options, so the comparison runs a ViT-T-sized encoder with four evenly spread output blocks.
_SETR_SHRINK = {"model.backbone.embed_dims": 192, "model.backbone.num_layers": 12, "model.backbone.num_heads": 3}
_SETR_UP_SHRINK = {**_SETR_SHRINK, "model.backbone.out_indices": (2, 5, 8, 11), "model.decode_head.in_channels": 192,
                   **{f"model.auxiliary_head.{j}.in_channels": 192 for j in range(3)}}
_SETR_MLA_SHRINK = {**_SETR_SHRINK, "model.backbone.out_indices": (2, 5, 8, 11),
                    "model.neck.in_channels": [192] * 4}


@dataclass(frozen=True)
class Case:
    """One (family, mmseg config) comparison.

    Args:
        family: the pair's family name (`<family>/mmseg` in the difference report).
        config: mmseg config, relative to `mmseg/.mim/configs`.
        model: the seglab model.
        options: edits of the mmseg config (shrinking); `overrides`: the matching seglab options, on top of the
            converter's.
        forward_seed: `torch.manual_seed` right before both forwards (SegNeXt's NMF draws random bases);
            `seed_ours=False` seeds ours with another value (its fixed bases must not depend on the generator).
        reversed_levels: mmseg's neck and auxiliary heads hold the levels deepest first (SETR-MLA).
        calibrate_bn: BN statistics measured on random data, then perturbed (`mmseg_runner.py`): HRNet's hundred
            BN layers with drawn statistics give activations of ~1e4, where float32 rounding alone exceeds 1e-4.
    """

    family: str
    config: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    forward_seed: int | None = None
    reversed_levels: bool = False
    calibrate_bn: bool = False
    seed_ours: bool = True


CASES = {
    "segformer_b0": Case("segformer", "segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py", "segformer_b0"),
    # NMF with the original's random bases, drawn from the same seeded generator in both
    "segnext_t": Case("segnext", "segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py", "segnext_t",
                      overrides={"ham_eval_bases": "random"}, forward_seed=123),
    # seglab's default fixed bases, drawn once from a generator seeded with ham_seed: the same draw for one image
    "segnext_t_fixed_bases": Case("segnext", "segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py", "segnext_t",
                                  overrides={"ham_seed": 123}, forward_seed=123, seed_ours=False),
    "fcn_hr18s": Case("hrnet", "hrnet/fcn_hr18s_4xb4-160k_ade20k-512x512.py", "fcn_hrnetv2_w18s", calibrate_bn=True),
    "fcn_hr48": Case("hrnet", "hrnet/fcn_hr48_4xb4-160k_ade20k-512x512.py", "fcn_hrnetv2_w48", calibrate_bn=True),
    "upernet_swin_t": Case("upernet_swin", "swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
                           "upernet_swin_t"),
    "setr_naive": Case("setr_naive", "setr/setr_vit-l_naive_8xb2-160k_ade20k-512x512.py", "setr_naive_vit_l",
                       _SETR_UP_SHRINK, {"layers": (2, 5, 8, 11)}),
    "setr_pup": Case("setr_pup", "setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py", "setr_pup_vit_l",
                     _SETR_UP_SHRINK, {"layers": (2, 5, 8, 11)}),
    "setr_mla": Case("setr_mla", "setr/setr_vit-l_mla_8xb2-160k_ade20k-512x512.py", "setr_mla_vit_l",
                     _SETR_MLA_SHRINK, {"layers": (2, 5, 8, 11)}, reversed_levels=True),
    "segmenter_vit_t": Case("segmenter", "segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py",
                            "segmenter_vit_t"),
}


def _case_spec(case: Case) -> dict[str, Any]:
    return {"config": case.config, "options": case.options, "seed": 0, "input_shape": INPUT_SHAPE, "input_seed": 1,
            "forward_seed": case.forward_seed, "calibrate_bn": case.calibrate_bn}


def _pretrained_spec(case_id: str) -> dict[str, Any]:
    config, _, options, source_options, _ = PRETRAINED_CASES[case_id]
    return {"config": config, "options": options, "part": "pretrained_backbone", "source_options": source_options,
            "seed": 3, "input_shape": INPUT_SHAPE, "input_seed": 4}


@pytest.fixture(scope="module", autouse=True)
def _prefetch_references(request: pytest.FixtureRequest) -> None:
    """Runs the mmseg side of every selected test in one process: mmseg's import alone takes seconds."""
    python, _ = mmseg_python()
    if python is None:
        return  # each test skips with the reason
    specs = []
    for item in request.session.items:
        if item.module is request.module and hasattr(item, "callspec"):
            case_id = item.callspec.params["case_id"]
            specs.append(_case_spec(CASES[case_id]) if item.originalname == "test_converted_model_matches_mmseg"
                         else _pretrained_spec(case_id))
    prefetch_mmseg(specs)


def _reference(spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    python, reason = mmseg_python()
    if python is None:
        pytest.skip(reason)
    return run_mmseg(spec)


def _split(ref: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    return [ref[f"{prefix}/{i}"] for i in range(sum(k.startswith(f"{prefix}/") for k in ref))]


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    """A localising check before the recorded one: which feature map differs, and by how much."""
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs mmseg {tuple(theirs.shape)}"
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOL, f"{what}: max |difference| {diff:.3g} (mmseg range {(theirs.max() - theirs.min()).item():.3g})"


@pytest.mark.parametrize("case_id", list(CASES))
@torch.no_grad()
def test_converted_model_matches_mmseg(case_id: str) -> None:
    case = CASES[case_id]
    ref = _reference(_case_spec(case))
    state = {k.removeprefix("state/"): v for k, v in ref.items() if k.startswith("state/")}
    if case.model.startswith("setr_"):
        # the shrunk ViT's output blocks are no tensor shape: passed to the converter, which builds the model to check
        result = convert_setr_mmseg(state, case.model, overrides=case.overrides)
    else:
        result = convert_checkpoint(state, "mmseg", case.model)
    assert not result.backbone_only
    model = create_model(case.model, num_classes=result.num_classes, **{**result.overrides, **case.overrides}).eval()
    model.load_state_dict(result.state_dict, strict=True)

    image = ref["input"]
    features = model.backbone(image)
    if hasattr(model, "neck"):
        features = model.neck(features)
    expected = _split(ref, "feat")
    if case.reversed_levels:
        expected = expected[::-1]
    assert len(features) == len(expected)
    for i, (ours, theirs) in enumerate(zip(features, expected, strict=True)):
        _close(ours, theirs, f"{case_id} feature {i}")

    if case.forward_seed is not None:
        torch.manual_seed(case.forward_seed if case.seed_ours else case.forward_seed + 1)
    logits = model(image)
    compare(logits, ref["logits"], pair=f"{case.family}/mmseg", tol=TOL)

    aux_expected = _split(ref, "aux")
    if case.reversed_levels:
        aux_expected = aux_expected[::-1]
    assert len(model.aux_heads) == len(aux_expected)
    for j, (head, theirs) in enumerate(zip(model.aux_heads, aux_expected, strict=True)):
        _close(head(features), theirs, f"{case_id} auxiliary head {j}")


# ImageNet ViT files as mmseg's recipes load them (`vit2mmseg.py` output: timm's weights under mmseg's names, a final
# norm `ln1`, a patch-embedding bias, a 384 grid), and a bias-free one as a 1.x-trained ViT saves it: the loading
# backbone is mmseg's own, through `init_weights` (position embedding resized to the config's grid, `strict=False`).
PRETRAINED_CASES = {
    # vit_tiny_p16_384 for Segmenter-T (bicubic resize, final norm kept); mmseg 1.x's default patch_bias=False would
    # silently drop the file's bias, so the loading model is built with it (as mmseg 0.x was)
    "segmenter_vit_t": ("segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py", "segmenter_vit_t",
                        {"model.backbone.patch_bias": True},
                        {"img_size": (384, 384), "final_norm": True, "patch_bias": True}, {}),
    # a bias-free ViT with a final norm, for the (shrunk) SETR-Naive encoder: bilinear resize, final norm dropped
    "setr_naive": ("setr/setr_vit-l_naive_8xb2-160k_ade20k-512x512.py", "setr_naive_vit_l", _SETR_UP_SHRINK,
                   {"img_size": (384, 384), "final_norm": True}, {"vit": "t", "layers": (2, 5, 8, 11)}),
}


@pytest.mark.parametrize("case_id", list(PRETRAINED_CASES))
@torch.no_grad()
def test_imagenet_vit_converts_as_mmseg_loads_it(case_id: str) -> None:
    _, model_name, _, source_options, overrides = PRETRAINED_CASES[case_id]
    ref = _reference(_pretrained_spec(case_id))
    state = {k.removeprefix("state/"): v for k, v in ref.items() if k.startswith("state/")}
    assert state["pos_embed"].shape[1] == 1 + 24 * 24 and "ln1.weight" in state
    assert ("patch_embed.projection.bias" in state) == source_options.get("patch_bias", False)
    if model_name.startswith("setr_"):
        result = convert_setr_mmseg(state, model_name, overrides=overrides)
    else:
        result = convert_checkpoint(state, "mmseg", model_name)
    assert result.backbone_only and result.num_classes is None
    assert result.overrides.get("patch_bias", True) == source_options.get("patch_bias", False)
    model = create_model(model_name, **result.overrides).eval()
    model.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in result.state_dict.items()}, strict=True)
    features, expected = model.backbone(ref["input"]), _split(ref, "feat")
    assert len(features) == len(expected)
    for ours, theirs in zip(features, expected, strict=True):
        compare(ours, theirs, pair="vit_imagenet/mmseg", tol=TOL)
