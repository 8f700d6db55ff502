"""Every registered semantic and refinement configuration exports to both deployment formats, each traced once
(`trace_program`) and written as a `torch.export` program (`.pt2`) and as ONNX: both equal to eager PyTorch within
1e-4 at two batches and sizes the export never saw, with dynamic batch, height and width.

Mask R-CNN is the one registered model left out (a data-dependent number of detections, see docs/export.md);
`test_every_configuration_is_exported` keeps `EXPORT_MODELS` equal to the registry. The fast tier runs
`FAST_EXPORT_MODELS`, `make test-all` one or more configurations of every family, `make test-zoo` each family's
other published widths and depths (`ZOO_EXPORT_MODELS`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_configs import EXPORT_MODELS, EXPORT_SIZE, build_model, export_params

import seglab
from seglab.export.onnx import check_onnx, export_onnx, graph_inputs
from seglab.export.program import check_program, export_program, load_program, program_input_ranges, trace_program

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.onnx

CHECKS = [(1, (96, 80)), (3, (77, 101))]  # (batch, (height, width)): neither the export's batch 2 nor its size
# Swin's window partition leaves a `batch != 1` guard in a program traced from a batch of 2, and the window shrunk to
# the maps smaller than it a guard that they stay so (docs/export.md): traced at 64 px, window-12 programs (MaskFormer
# Swin-B/L) take 1/8 maps of up to 12 (inputs up to about 96 px), window-7 ones 1/16 maps of up to 7
CHECKS_SWIN = [(3, (96, 80)), (4, (77, 101))]
CHECKS_SWIN_WINDOW12 = [(3, (96, 80)), (4, (77, 90))]
# SegViT's program keeps the export size's "a multiple of the 16 px patch" (no padding) as a guard, and the
# Shrunk variant's query reshape a `batch != 1` one, like Swin (docs/export.md)
CHECKS_SEGVIT = [(3, (96, 80)), (4, (112, 48))]
TOLERANCE = 1e-4
# ONNX Runtime's convolutions sum in another order than PyTorch's: through ResNet-101 and MaskFormer's sum over 100
# queries (outputs up to 21 here) that reaches 2.1e-4, 1e-5 of the output (its program is within 1e-4; docs/export.md)
ONNX_TOLERANCE = {"maskformer_r101": 5e-4}


def test_every_configuration_is_exported():
    """A new semantic or refinement model must join `EXPORT_MODELS` (and so pass the parity test)."""
    exported = {name for name, _ in EXPORT_MODELS}
    assert len(exported) == len(EXPORT_MODELS)  # each configuration once
    expected = set(seglab.list_models(task="semantic")) | set(seglab.list_models(task="refine"))
    assert exported == expected, (f"missing: {sorted(expected - exported)}, "
                                  f"not registered: {sorted(exported - expected)}")


@pytest.mark.parametrize("config", export_params())
def test_program_and_onnx_equal_eager_at_other_sizes(config, tmp_path):
    name, overrides = config
    model = build_model(name, overrides)
    program = trace_program(model, *EXPORT_SIZE)
    pt2 = export_program(model, tmp_path / f"{name}.pt2", program=program)
    onnx = export_onnx(model, tmp_path / f"{name}.onnx", *EXPORT_SIZE, program=program)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([pt2.name, onnx.name])  # atomic: no temporary file

    ranges = program_input_ranges(program)
    assert ranges and all(hi is None and lo <= 64 for lo, hi in ranges.values()), ranges  # dynamic, unbounded
    loaded = load_program(pt2)
    checks = (CHECKS_SWIN_WINDOW12 if name in ("maskformer_swin_b", "maskformer_swin_l") else CHECKS_SWIN
              if "swin" in name else CHECKS_SEGVIT if name.startswith("segvit") else CHECKS)
    for batch, size in checks:
        diff = check_program(model, loaded, sizes=[size], batch=batch)
        assert diff <= TOLERANCE, f"program: max abs diff {diff:.3g} at batch {batch}, size {size}"
    for batch, size in checks:
        diff = check_onnx(model, onnx, sizes=[size], batch=batch)
        assert diff <= ONNX_TOLERANCE.get(name, TOLERANCE), f"ONNX: max abs diff {diff:.3g} at {batch}, {size}"

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    expected = graph_inputs(model)  # (images, 3), or BPR's (image, 3), (mask, 1)
    assert [(i.name, i.shape[1]) for i in session.get_inputs()] == list(expected)
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for inp in session.get_inputs():
        assert inp.shape[0] == "batch" and inp.shape[2:] == ["height", "width"], inp.shape


@pytest.mark.parametrize("name", ["segformer_b0", pytest.param("fcn_hrnetv2_w18s_v1", marks=pytest.mark.slow)])
# align_corners False (SegFormer) and True (HRNet's default)
def test_labels_in_the_graph(name, tmp_path):
    """`labels=True` puts the resize to the input size and the argmax in the graph: int32 labels (B, H, W) equal to
    eager PyTorch's at sizes the export never saw, in both formats; another model's labels differ."""
    model = build_model(name, {})
    program = trace_program(model, *EXPORT_SIZE, labels=True)
    pt2 = export_program(model, tmp_path / f"{name}_labels.pt2", program=program)
    onnx = export_onnx(model, tmp_path / f"{name}_labels.onnx", *EXPORT_SIZE, labels=True, program=program)
    images = torch.randn(2, 3, 75, 93, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(model(images), size=(75, 93), mode="bilinear",
                                                 align_corners=model.align_corners)
    expected = logits.argmax(1).to(torch.int32)
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["labels"]
    (from_onnx,) = session.run(["labels"], {"images": images.numpy()})
    assert from_onnx.dtype == np.int32 and from_onnx.shape == (2, 75, 93)
    assert (from_onnx == expected.numpy()).all()
    from_program = load_program(pt2)(images)
    assert from_program.dtype == torch.int32 and torch.equal(from_program, expected)
    assert check_onnx(model, onnx, sizes=[(61, 80), (97, 66)], batch=2) == 0.0
    assert check_program(model, pt2, sizes=[(61, 80), (97, 66)], batch=2) == 0.0

    other = build_model(name, {})
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert check_program(other, pt2, sizes=[(64, 96)]) > 0.01  # another model's labels
    assert check_onnx(other, onnx, sizes=[(64, 96)]) > 0.01
