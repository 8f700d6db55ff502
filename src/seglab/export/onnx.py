"""ONNX export of `model(images) -> logits` with dynamic batch, height and width, and an onnxruntime parity check.

By default only the network is exported: resizing to the original image, sliding windows and test-time
augmentation stay in `seglab.inference`, which works on an onnxruntime session's logits as well as on the eager
model. `labels=True` (`seglab export --labels`) adds the resize to the input size and the argmax to the graph
(`LabelGraph`), so a whole-image deployment needs no post-processing: `labels` (B, H, W) int32 out.

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
from seglab.export.graph import (
    LabelGraph,
    example_inputs,
    example_logits,
    graph_inputs,
    model_device_dtype,
    trace_program,
)

OUTPUT_NAME = "logits"
LABELS_NAME = "labels"


def export_onnx(
    model: nn.Module,
    path: str | Path,
    height: int = 512,
    width: int = 512,
    opset: int = 18,
    batch: int = 2,
    in_channels: int = 3,
    dynamo: bool = True,
    labels: bool = False,
    program=None,
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
        labels: put the resize to the input size and the argmax in the graph (`LabelGraph`): the output is
            `labels` (B, H, W) int32 instead of `logits`.
        program: `seglab.export.program.trace_program`'s result for this model (same size, batch and `labels`), to
            convert instead of tracing again (dynamo exporter only).

    Returns:
        The path written.
    """
    for name, value in (("height", height), ("width", width), ("batch", batch), ("in_channels", in_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if program is not None and not dynamo:
        raise ValueError("program= is a torch.export trace: it goes with the dynamo exporter (dynamo=True)")
    path = Path(path)
    device, dtype = model_device_dtype(model)
    inputs = graph_inputs(model, in_channels)
    if labels and len(inputs) > 1:
        raise ValueError("labels=True puts the resize and argmax of a semantic model in the graph; BPR's output is "
                         "refined at patch level, export it without labels")
    images = tuple(t.to(device) for t in example_inputs(inputs, batch, height, width, dtype=dtype))
    input_names = [name for name, _ in inputs]
    output_name = LABELS_NAME if labels else OUTPUT_NAME
    if dynamo:
        # the ONNX exporter converts a torch.export program: the one `export_program` saves, traced once here
        if program is None:
            program = trace_program(model, height, width, batch, labels)
        with torch.no_grad():
            onnx_program = torch.onnx.export(program, images, None, dynamo=True, input_names=input_names,
                                             output_names=[output_name], opset_version=opset, verbose=False)
        _name_axes(onnx_program.model)
        # one self-contained file, so that the atomic rename moves everything
        atomic_write(path, lambda tmp: onnx_program.save(tmp, external_data=False))
        return path
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            example_logits(model, *images)
            network = LabelGraph(model).eval() if labels else model
            dynamic_axes = {
                **{name: {0: "batch", 2: "height", 3: "width"} for name in input_names},
                output_name: {0: "batch", 1 if labels else 2: "height" if labels else "logits_height",
                              2 if labels else 3: "width" if labels else "logits_width"},
            }

            def write(tmp: str) -> None:
                with warnings.catch_warnings():  # the deprecation notice of the legacy exporter, chosen here
                    warnings.filterwarnings("ignore", message=".*legacy TorchScript", category=DeprecationWarning)
                    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
                    torch.onnx.export(
                        network, images, tmp, dynamo=False, input_names=input_names,
                        output_names=[output_name], opset_version=opset, dynamic_axes=dynamic_axes,
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
        The largest absolute difference between the two runtimes' logits over all sizes (inf where either gives a
        NaN); for a file exported with `labels=True`, the largest fraction of pixels whose label differs.
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
    inputs = graph_inputs(model, in_channels)
    if input_names != [name for name, _ in inputs]:
        raise ValueError(f"{path} has inputs {input_names}, expected {[name for name, _ in inputs]} for "
                         f"{getattr(model, 'model_name', type(model).__name__)} (export with export_onnx)")
    output = session.get_outputs()[0].name
    labels = output == LABELS_NAME
    device, dtype = model_device_dtype(model)
    generator = torch.Generator().manual_seed(seed)
    max_diff = 0.0
    was_training = model.training
    model.eval()
    try:
        for height, width in sizes:
            images = example_inputs(inputs, batch, height, width, generator=generator, dtype=dtype)
            on_device = [t.to(device) for t in images]
            with torch.no_grad():
                eager = LabelGraph(model)(*on_device) if labels else example_logits(model, *on_device)
            expected = eager.cpu().numpy() if labels else eager.float().cpu().numpy()
            (got,) = session.run([output], {name: t.numpy() for name, t in zip(input_names, images, strict=True)})
            if got.shape != expected.shape:
                raise ValueError(f"{path} at input {(batch, in_channels, height, width)} gives {output} {got.shape}, "
                                 f"eager PyTorch gives {expected.shape}: a shape was frozen at export")
            diff = float((got != expected).mean()) if labels else float(np.abs(got.astype(np.float32) - expected).max())
            if np.isnan(diff):  # a NaN on either side is no parity (and `max` would skip it)
                diff = float("inf")
            max_diff = max(max_diff, diff)
    finally:
        model.train(was_training)
    return max_diff
