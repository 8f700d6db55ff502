"""ONNX export of `model(images) -> logits` with dynamic batch, height and width, and an onnxruntime parity check.

Only the network is exported: resizing to the original image, sliding windows and test-time augmentation stay
in `seglab.inference`, which works on an onnxruntime session's logits as well as on the eager model.

Two exporters of torch 2.14 are offered. The default (`dynamo=True`, `torch.export` based) traces shapes
symbolically, so size arithmetic inside the model (padding to a multiple, token grids) stays symbolic. The
TorchScript tracer (`dynamo=False`, deprecated upstream, about ten times faster to export) records Python
branches taken on the example size; both export SegFormer correctly. With either, a Python branch taken on
a shape is frozen at the export size, so always check the file with `check_onnx` at sizes other than the export
size, including sizes that are not multiples of 32.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seglab.checkpoint import atomic_write

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def _example_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"ONNX export needs model(images) to return a logits tensor (B, K, h, w), got {got}")
    return out


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def export_onnx(
    model: nn.Module,
    path: str | Path,
    height: int = 512,
    width: int = 512,
    opset: int = 18,
    batch: int = 2,
    in_channels: int = 3,
    dynamo: bool = True,
) -> Path:
    """Exports `model(images) -> logits` to an ONNX file with dynamic batch, height and width axes.

    The model is exported in eval mode (its mode is restored afterwards). The graph's input is named
    `images` (B, C, H, W) float and its output `logits` (B, K, h, w). The file is written atomically.

    Args:
        model: a segmentation model returning logits.
        path: the `.onnx` file to write.
        height: height of the example input used for tracing.
        width: width of the example input used for tracing.
        opset: ONNX opset version.
        batch: batch size of the example input (the exported batch axis is dynamic either way). Keep it above 1:
            from a batch of 1 the exporter annotates the broadcast of (1, N, C) parameters (a ViT's position
            embedding) as batch 1, and onnxruntime then fails at any other batch.
        in_channels: channels of the example input.
        dynamo: use the `torch.export`-based exporter; False uses the TorchScript tracer.

    Returns:
        The path written.
    """
    for name, value in (("height", height), ("width", width), ("batch", batch), ("in_channels", in_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    path = Path(path)
    device, dtype = _model_device_dtype(model)
    images = torch.randn(batch, in_channels, height, width, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _example_logits(model, images)
            if dynamo:
                dim = torch.export.Dim.DYNAMIC
                program = torch.onnx.export(
                    model, (images,), None, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    opset_version=opset, dynamic_shapes=({0: dim, 2: dim, 3: dim},), verbose=False,
                )
                _name_axes(program.model)
                # one self-contained file, so that the atomic rename moves everything
                atomic_write(path, lambda tmp: program.save(tmp, external_data=False))
            else:
                dynamic_axes = {
                    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT_NAME: {0: "batch", 2: "logits_height", 3: "logits_width"},
                }

                def write(tmp: str) -> None:
                    with warnings.catch_warnings():  # the deprecation notice of the legacy exporter, chosen here
                        warnings.filterwarnings("ignore", message=".*legacy TorchScript", category=DeprecationWarning)
                        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
                        torch.onnx.export(
                            model, (images,), tmp, dynamo=False, input_names=[INPUT_NAME],
                            output_names=[OUTPUT_NAME], opset_version=opset, dynamic_axes=dynamic_axes,
                        )

                atomic_write(path, write)
    finally:
        model.train(was_training)
    return path


def _name_axes(model) -> None:
    """Renames the exporter's shape symbols (`s34`, `s14`, `s54`) to batch, height and width everywhere in the graph,
    so that the input reads (batch, 3, height, width) and an output e.g. (batch, K, ((height - 1)//4) + 1, ...)."""
    import re

    import onnx_ir as ir

    dims = model.graph.inputs[0].shape
    names = {str(dims[axis]): name for axis, name in ((0, "batch"), (2, "height"), (3, "width"))
             if isinstance(dims[axis], ir.SymbolicDim) and dims[axis].value}
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")

    def renamed(shape):
        return ir.Shape([ir.SymbolicDim(pattern.sub(lambda m: names[m.group(1)], d.value))
                         if isinstance(d, ir.SymbolicDim) and d.value else d for d in shape])

    values = [*model.graph.inputs, *model.graph.outputs]
    values += [v for node in model.graph.all_nodes() for v in node.outputs]
    for value in values:
        if value.shape is not None:
            value.shape = renamed(value.shape)


def check_onnx(
    model: nn.Module,
    path: str | Path,
    sizes: Sequence[tuple[int, int]] = ((512, 512), (384, 640)),
    batch: int = 1,
    in_channels: int = 3,
    seed: int = 0,
) -> float:
    """Runs an exported file with onnxruntime (CPU) and eager PyTorch on the same random inputs.

    Args:
        model: the model the file was exported from (run in eval mode; its mode is restored afterwards).
        path: the `.onnx` file.
        sizes: (height, width) input sizes to compare at; include sizes other than the export size.
        batch: batch size of every input.
        in_channels: channels of the inputs.
        seed: seed of the random inputs.

    Returns:
        The largest absolute difference between the two runtimes' logits over all sizes.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("check_onnx needs onnxruntime: pip install 'seglab[onnx]'") from exc
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    if not sizes:
        raise ValueError("sizes must list at least one (height, width) to compare at")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    if input_names != [INPUT_NAME]:
        raise ValueError(f"{path} has inputs {input_names}, expected [{INPUT_NAME!r}] (export with export_onnx)")
    device, dtype = _model_device_dtype(model)
    generator = torch.Generator().manual_seed(seed)
    max_diff = 0.0
    was_training = model.training
    model.eval()
    try:
        for height, width in sizes:
            images = torch.randn(batch, in_channels, height, width, generator=generator, dtype=dtype)
            with torch.no_grad():
                expected = _example_logits(model, images.to(device)).float().cpu().numpy()
            (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
            if got.shape != expected.shape:
                raise ValueError(f"{path} at input {(batch, in_channels, height, width)} gives logits {got.shape}, "
                                 f"eager PyTorch gives {expected.shape}: a shape was frozen at export")
            max_diff = max(max_diff, float(np.abs(got.astype(np.float32) - expected).max()))
    finally:
        model.train(was_training)
    return max_diff
