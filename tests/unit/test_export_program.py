"""torch.export programs (`.pt2`) of every configuration that exports to ONNX: saved, loaded back, equal to eager
PyTorch at sizes and batches the export never saw."""

from __future__ import annotations

import pytest
import torch
from export_configs import EXPORT_MODELS, EXPORT_SIZE, FAST_EXPORT_MODELS, build_model

from seglab.cli.main import main
from seglab.export.program import check_program, export_program, load_program, program_input_ranges

CHECK = [(1, (96, 80)), (3, (77, 101))]  # (batch, (height, width)): neither the export's batch 2 nor its size
# Swin's window partition leaves a `batch != 1` guard in a program traced from a batch of 2 (docs/export.md)
CHECK_SWIN = [(3, (96, 80)), (4, (77, 101))]
# SegViT's program keeps the export size's "a multiple of the 16 px patch" (no padding) as a guard, and the
# Shrunk variant's query reshape a `batch != 1` one, like Swin (docs/export.md)
CHECK_SEGVIT = [(3, (96, 80)), (4, (112, 48))]
TOLERANCE = 1e-4


@pytest.mark.parametrize("config", [
    pytest.param(m, id=m[0], marks=() if m[0] in FAST_EXPORT_MODELS else pytest.mark.slow) for m in EXPORT_MODELS])
def test_program_parity_at_other_sizes(config, tmp_path):
    name, overrides = config
    model = build_model(name, overrides)
    path = export_program(model, tmp_path / f"{name}.pt2", *EXPORT_SIZE)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # atomic write: no temporary file left behind
    ranges = program_input_ranges(path)
    assert ranges and all(hi is None and lo <= 64 for lo, hi in ranges.values()), ranges  # dynamic, unbounded
    checks = CHECK_SWIN if "swin" in name else CHECK_SEGVIT if name.startswith("segvit") else CHECK
    for batch, size in checks:
        diff = check_program(model, path, sizes=[size], batch=batch)
        assert diff <= TOLERANCE, f"max abs diff {diff:.3g} at batch {batch}, size {size}"


def test_program_with_labels_and_a_different_model(tmp_path):
    model = build_model("segformer_b0", {})
    path = export_program(model, tmp_path / "b0_labels.pt2", *EXPORT_SIZE, labels=True)
    images = torch.randn(2, 3, 75, 93, generator=torch.Generator().manual_seed(3))
    labels = load_program(path)(images)
    assert labels.dtype == torch.int32 and labels.shape == (2, 75, 93)
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(model(images), size=(75, 93), mode="bilinear",
                                                 align_corners=model.align_corners)
    assert torch.equal(labels, logits.argmax(1).to(torch.int32))
    other = build_model("segformer_b0", {})
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert check_program(other, export_program(other, tmp_path / "other.pt2", *EXPORT_SIZE),
                         sizes=[(64, 96)]) == 0.0
    assert check_program(other, tmp_path / "b0_labels.pt2", sizes=[(64, 96)]) > 0.01  # another model's labels
    with pytest.raises(FileNotFoundError, match="program not found"):
        load_program(tmp_path / "missing.pt2")


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
    onnx_path = export_onnx(model, tmp_path / "b0.onnx", *EXPORT_SIZE, dynamo=False)  # the fast exporter
    program_path = export_program(model, tmp_path / "b0.pt2", *EXPORT_SIZE)
    with torch.no_grad():
        model.decode_head.classifier.bias.fill_(float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "invalid value" on NaN arithmetic
        assert check_onnx(model, onnx_path, sizes=[(64, 96)]) == float("inf")
    assert check_program(model, program_path, sizes=[(64, 96)]) == float("inf")
