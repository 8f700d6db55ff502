"""Export of seglab models to other runtimes (ONNX), with a numerical parity check against eager PyTorch."""

from seglab.export.onnx import check_onnx, export_onnx

__all__ = ["check_onnx", "export_onnx"]
