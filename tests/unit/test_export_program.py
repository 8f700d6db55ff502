"""torch.export programs (`.pt2`): the CLI, errors, NaN outputs. Every configuration's program is checked against
eager PyTorch in test_export_every_model.py."""

from __future__ import annotations

import pytest
import torch
from export_configs import EXPORT_SIZE, build_model

from seglab.cli.main import main
from seglab.export.program import check_program, export_program, load_program


def test_export_cli_writes_a_program(tmp_path, capsys):
    out = tmp_path / "b0.pt2"
    assert main(["export", "--model", "segformer_b0", "--num-classes", "4", "--out", str(out), "--height", "64",
                 "--width", "64", "--check"]) == 0
    printed = capsys.readouterr().out
    assert "torch.export program" in printed and "images.height" in printed
    assert load_program(out)(torch.randn(1, 3, 70, 90)).shape == (1, 4, 18, 23)


def test_a_nan_is_never_parity(tmp_path):
    """NaN outputs would compare as no difference (`max` skips NaN): both checks report inf instead."""
    import warnings

    from seglab.export.onnx import check_onnx, export_onnx

    model = build_model("segformer_b0", {})
    with pytest.raises(FileNotFoundError, match="program not found"):
        load_program(tmp_path / "missing.pt2")
    onnx_path = export_onnx(model, tmp_path / "b0.onnx", *EXPORT_SIZE, dynamo=False)  # the fast exporter
    program_path = export_program(model, tmp_path / "b0.pt2", *EXPORT_SIZE)
    with torch.no_grad():
        model.decode_head.classifier.bias.fill_(float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "invalid value" on NaN arithmetic
        assert check_onnx(model, onnx_path, sizes=[(64, 96)]) == float("inf")
    assert check_program(model, program_path, sizes=[(64, 96)]) == float("inf")
