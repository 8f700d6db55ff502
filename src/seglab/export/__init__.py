"""Export of seglab models to other runtimes (ONNX, torch.export programs), with a numerical parity check against
eager PyTorch."""

from seglab.export.onnx import check_onnx, export_onnx
from seglab.export.program import check_program, export_program, load_program

__all__ = ["check_onnx", "check_program", "export_onnx", "export_program", "load_program"]
