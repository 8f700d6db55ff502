"""ONNX export: the TorchScript exporter, errors, `check_onnx`. Every configuration's ONNX file (the dynamo exporter,
the default) is checked against eager PyTorch in test_export_every_model.py."""

from __future__ import annotations

import pytest
import torch
from export_configs import EXPORT_SIZE
from export_configs import build_model as _build

from seglab.export.onnx import check_onnx, export_onnx

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.onnx


TOLERANCE = 1e-4


def test_check_onnx_detects_a_different_model(tmp_path):
    model = _build("segmenter_vit_t", {"img_size": 32})
    path = export_onnx(model, tmp_path / "segmenter.onnx", *EXPORT_SIZE, dynamo=False)
    assert check_onnx(model, path, sizes=[(64, 96)]) <= TOLERANCE
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
