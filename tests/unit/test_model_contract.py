"""The contract every registered model keeps (docs/architecture.md, "Contracts"), checked over `list_models()`: a new
model gets these checks by being registered.

- it builds with its default options, and its parameter count (on the meta device) is within 1% of the published
  one, or within the published figure's rounding (half a unit of its last digit: 0.05 M for "3.8 M", 0.5 M for the
  official SegNeXt README's "4 M");
- semantic models: `forward` at an odd input size (67 x 91) returns (B, num_classes, h, w) with
  `H <= h * output_stride < H + 32` (logits at the head's stride, the input padded at most to a multiple of 32),
  and `align_corners` is a bool attribute; instance models return one dict of boxes / labels / scores / masks per
  image; refine models (BPR) 2-class logits at stride 4 of the patch;
- its state dict survives a seglab checkpoint bit-exactly: `save_model` then `create_model(name, checkpoint=...)`
  gives the same tensors and the same outputs.

Shapes are checked on the meta device (no memory, no compute) for every model; the real forward and the checkpoint
round trip run on the CPU for models up to 70 M parameters, and for the larger ones on the family's smallest
registered variant (same classes and builder, other sizes); the fast tier runs the smallest model of each builder
up to 40 M parameters, `make test-all` all of them.
"""

from __future__ import annotations

import pytest
import torch

import seglab
from seglab.checkpoint import save_model
from seglab.registry import get_entry

NAMES = seglab.list_models()
SIZE = (67, 91)
REAL_LIMIT = 70e6
FAST_LIMIT = 40e6


def _meta_model(name: str):
    with torch.device("meta"):
        return seglab.create_model(name).eval()


def _param_count(name: str) -> int:
    return sum(p.numel() for p in _meta_model(name).parameters())


def _inputs(name: str, device: str | None = None):
    task = get_entry(name).task
    kwargs = {} if device is None else {"device": device}
    if task == "refine":
        return torch.rand(1, 3, 128, 128, **kwargs), torch.rand(1, 1, 128, 128, **kwargs) * 2 - 1
    if task == "instance":
        return ([torch.rand(3, *SIZE, **kwargs)],)
    return (torch.rand(1, 3, *SIZE, **kwargs),)


def test_every_model_has_a_task_and_a_description():
    for name in NAMES:
        entry = get_entry(name)
        assert entry.task in ("semantic", "instance", "refine"), name
        assert entry.description, name
    assert {"mask_rcnn_r50_fpn", "mask_rcnn_r50_fpn_v2", "mask_rcnn_swin_t_fpn", "bpr_hrnet18s"} <= set(NAMES)


@pytest.mark.parametrize("name", [n for n in NAMES if get_entry(n).published_params_m is not None])
def test_parameter_count_matches_the_paper(name):
    published = get_entry(name).published_params_m
    count = _param_count(name) / 1e6
    rounding = 0.5 if float(published).is_integer() else 0.05  # half a unit of the published figure's last digit
    assert abs(count - published) <= max(0.01 * published, rounding), f"{name}: {count:.3f} M vs {published} M"


@pytest.mark.parametrize("name", [n for n in NAMES if get_entry(n).task == "semantic"])
def test_semantic_output_shape_and_stride(name):
    model = _meta_model(name)
    with torch.device("meta"):
        logits = model(*_inputs(name))
    stride = model.output_stride
    assert logits.shape[:2] == (1, model.num_classes), name
    for side, out in zip(SIZE, logits.shape[-2:], strict=True):
        assert side <= out * stride < side + 32, f"{name}: {tuple(logits.shape)} at stride {stride} for {SIZE}"
    assert isinstance(model.align_corners, bool)


def _smallest_of_family(name: str) -> str:
    """`name`, or, past REAL_LIMIT parameters, the registered variant of the same builder with the fewest."""
    if _param_count(name) <= REAL_LIMIT:
        return name
    build = get_entry(name).build
    family = [n for n in NAMES if get_entry(n).build is build]
    return min(family, key=_param_count)


def _real_cases() -> list:
    """Every model up to REAL_LIMIT parameters (a larger one: its family's smallest). The fast tier runs one model
    per builder of at most FAST_LIMIT parameters; the rest run in `make test-all` (marker `slow`)."""
    cases = sorted({_smallest_of_family(n) for n in NAMES})
    fast = set()
    for build in {get_entry(n).build for n in cases}:
        smallest = min((n for n in cases if get_entry(n).build is build), key=_param_count)
        if _param_count(smallest) <= FAST_LIMIT:
            fast.add(smallest)
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in cases]


@pytest.mark.parametrize("name", _real_cases())
def test_forward_and_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = seglab.create_model(name).eval()
    inputs = _inputs(name)
    with torch.no_grad():
        out = model(*inputs)
    task = get_entry(name).task
    if task == "instance":
        assert set(out[0]) >= {"boxes", "labels", "scores", "masks"}
    elif task == "refine":
        assert out.shape == (1, 2, 32, 32)
    path = tmp_path / f"{name}.safetensors"
    save_model(path, model)
    loaded = seglab.create_model(name, checkpoint=path).eval()
    path.unlink()  # up to 1.2 GB for the ViT-L models: pytest keeps the temporary folders of the last runs
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    if task != "instance":  # detections: equal weights give equal detections; comparing them adds nothing
        with torch.no_grad():
            assert torch.equal(loaded(*inputs), out)
