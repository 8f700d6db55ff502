"""ONNX export: dynamic batch/height/width, parity with eager PyTorch at sizes other than the export size.

Every registered configuration but the instance models (Mask R-CNN: a data-dependent number of detections, see
docs/export.md) is in `EXPORT_MODELS` and must pass the same test; `test_every_configuration_is_exported` keeps it so.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_configs import EXPORT_MODELS, EXPORT_SIZE, FAST_EXPORT_MODELS
from export_configs import build_model as _build

import seglab
from seglab.export.onnx import check_onnx, export_onnx, graph_inputs

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.onnx

CHECK_SIZES = [(2, (64, 96)), (1, (77, 50))]
TOLERANCE = 1e-4


def test_every_configuration_is_exported():
    """A new semantic or refinement model must join `EXPORT_MODELS` (and so pass the parity test)."""
    exported = {name for name, _ in EXPORT_MODELS}
    assert len(exported) == len(EXPORT_MODELS)  # each configuration once
    expected = set(seglab.list_models(task="semantic")) | set(seglab.list_models(task="refine"))
    assert exported == expected, (f"missing: {sorted(expected - exported)}, "
                                  f"not registered: {sorted(exported - expected)}")


@pytest.fixture(scope="module", params=[
    pytest.param(m, id=m[0], marks=() if m[0] in FAST_EXPORT_MODELS else pytest.mark.slow) for m in EXPORT_MODELS])
def exported(request, tmp_path_factory):
    name, overrides = request.param
    model = _build(name, overrides)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{name}.onnx", *EXPORT_SIZE)
    return model, path


def test_onnx_parity_at_other_sizes(exported):
    model, path = exported
    for batch, size in CHECK_SIZES:
        assert size != EXPORT_SIZE
        diff = check_onnx(model, path, sizes=[size], batch=batch)
        assert diff <= TOLERANCE, f"max abs diff {diff:.3g} at batch {batch}, size {size}"


def test_onnx_graph_names_and_dynamic_axes(exported):
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.get_outputs()
    expected = graph_inputs(model)  # (images, 3), or BPR's (image, 3), (mask, 1)
    assert [(i.name, i.shape[1]) for i in session.get_inputs()] == list(expected) and out.name == "logits"
    for inp in session.get_inputs():
        assert all(isinstance(d, str) for d in (inp.shape[0], inp.shape[2], inp.shape[3]))
    inputs = [torch.randn(3, channels, 45, 61) for _, channels in expected]
    (logits,) = session.run(None, {name: t.numpy() for (name, _), t in zip(expected, inputs)})
    with torch.no_grad():
        assert logits.shape == tuple(model(*inputs).shape)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # atomic write: no temporary file left behind


def test_check_onnx_detects_a_different_model(exported):
    model, path = exported
    other = _build(model.model_name, model.model_overrides)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert check_onnx(other, path, sizes=[(64, 96)]) > 1e-2


def test_torchscript_exporter(tmp_path):
    model = _build("segformer_b0", {})
    model.train()
    path = export_onnx(model, tmp_path / "b0.onnx", height=64, width=64, dynamo=False)
    assert model.training  # mode restored
    assert check_onnx(model, path, sizes=[(77, 50), (32, 96)], batch=2) <= TOLERANCE
    assert model.training


def test_export_errors(tmp_path):
    model = _build("segformer_b0", {})
    with pytest.raises(ValueError, match="height must be a positive int"):
        export_onnx(model, tmp_path / "x.onnx", height=0)
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        check_onnx(model, tmp_path / "missing.onnx", sizes=[(32, 32)])
    with pytest.raises(TypeError, match=r"logits tensor \(B, K, h, w\)"):
        export_onnx(torch.nn.Flatten(), tmp_path / "flat.onnx", height=8, width=8)


@pytest.mark.parametrize("name", ["segformer_b0", pytest.param("fcn_hrnetv2_w18s_v1", marks=pytest.mark.slow)])
# align_corners False (SegFormer) and True (HRNet's default)
def test_labels_in_the_graph(name, tmp_path):
    """`labels=True` puts the resize to the input size and the argmax in the graph: int32 labels (B, H, W) equal to
    eager PyTorch's at sizes the export never saw."""
    model = _build(name, {})
    path = export_onnx(model, tmp_path / f"{name}_labels.onnx", *EXPORT_SIZE, labels=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["labels"]
    images = torch.randn(2, 3, 75, 93, generator=torch.Generator().manual_seed(3))
    (labels,) = session.run(["labels"], {"images": images.numpy()})
    assert labels.dtype == np.int32 and labels.shape == (2, 75, 93)
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(model(images), size=(75, 93), mode="bilinear",
                                                 align_corners=model.align_corners)
    assert (labels == logits.argmax(1).numpy()).all()
    assert check_onnx(model, path, sizes=[(61, 80), (97, 50)], batch=2) == 0.0
