"""ONNX export: dynamic batch/height/width, parity with eager PyTorch at sizes other than the export size.

Every model that claims ONNX support goes in `ONNX_MODELS` and must pass the same test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import seglab
from seglab.export.onnx import check_onnx, export_onnx

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.onnx

# (model name, constructor overrides); export at EXPORT_SIZE, checked at CHECK_SIZES (batch, (height, width))
ONNX_MODELS: list[tuple[str, dict]] = [
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
]
# exported in the fast tier; the others (10-100 s each to export) run in `make test-all`
FAST_ONNX_MODELS = ("segformer_b0", "fcn_hrnetv2_w18s_v1", "segmenter_vit_t", "segmenter_vit_s_linear")
EXPORT_SIZE = (64, 64)
CHECK_SIZES = [(2, (64, 96)), (1, (77, 50))]
TOLERANCE = 1e-4


def _build(name: str, overrides: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return seglab.create_model(name, num_classes=6, **overrides).eval()


@pytest.fixture(scope="module", params=[
    pytest.param(m, id=m[0], marks=() if m[0] in FAST_ONNX_MODELS else pytest.mark.slow) for m in ONNX_MODELS])
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
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "images" and out.name == "logits"
    assert inp.shape[1] == 3 and all(isinstance(d, str) for d in (inp.shape[0], inp.shape[2], inp.shape[3]))
    (logits,) = session.run(None, {"images": torch.randn(3, 3, 45, 61).numpy()})
    with torch.no_grad():
        assert logits.shape == tuple(model(torch.randn(3, 3, 45, 61)).shape)
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
