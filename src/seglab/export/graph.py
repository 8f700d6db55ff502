"""What both export formats share: the graph's inputs per task, example inputs, the labels head (`LabelGraph`), and
the one `torch.export` trace (`trace_program`) that `export_program` saves and `export_onnx` converts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

INPUT_NAME = "images"
# BPR (task `refine`) takes a boundary patch and its coarse mask: two inputs of the same size
REFINE_INPUTS = (("image", 3), ("mask", 1))


def graph_inputs(model: nn.Module, in_channels: int = 3) -> tuple[tuple[str, int], ...]:
    """The exported graph's inputs as (name, channels): `images` for semantic models, `image` and `mask` for BPR."""
    from seglab.registry import get_entry

    name = getattr(model, "model_name", None)
    try:
        task = get_entry(name).task if name else "semantic"
    except (KeyError, ValueError):
        task = "semantic"
    if task == "instance":
        raise ValueError(f"{name} is an instance model (detections of data-dependent count, with NMS); ONNX export "
                         f"covers semantic models (images -> logits) and BPR (image, mask -> logits)")
    return REFINE_INPUTS if task == "refine" else ((INPUT_NAME, in_channels),)


def example_inputs(inputs: Sequence[tuple[str, int]], batch: int, height: int, width: int,
                    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
                    ) -> list[torch.Tensor]:
    """Random inputs: N(0, 1) images, and a binary mask for BPR's `mask`."""
    tensors = []
    for name, channels in inputs:
        if name == "mask":
            tensors.append((torch.rand(batch, channels, height, width, generator=generator) > 0.5).to(dtype))
        else:
            tensors.append(torch.randn(batch, channels, height, width, generator=generator, dtype=dtype))
    return tensors


class LabelGraph(nn.Module):
    """`model` with the post-processing in the graph: logits resized bilinearly to the input size (with the model's
    `align_corners`) and the argmax over classes, as int32 (B, H, W): a deployment needs no post-processing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.align_corners = bool(getattr(model, "align_corners", False))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        logits = torch.nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                                                 align_corners=self.align_corners)
        return logits.argmax(1).to(torch.int32)


def example_logits(model: nn.Module, *images: torch.Tensor) -> torch.Tensor:
    out = model(*images)
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"ONNX export needs model(images) to return a logits tensor (B, K, h, w), got {got}")
    return out


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def trace_program(model: nn.Module, height: int = 512, width: int = 512, batch: int = 2,
                  labels: bool = False) -> torch.export.ExportedProgram:
    """Traces `model` with `torch.export` (dynamic batch, height and width): the one trace behind both
    `export_program` and `export_onnx`, which take it as `program=` so that a model written in both formats is
    traced once.

    Args:
        model: a semantic model (images -> logits) or BPR (image, mask -> logits); traced in eval mode (its mode is
            restored afterwards).
        height, width, batch: the example input's size; from a batch of 1 the program's batch is fixed at 1
            (otherwise dynamic).
        labels: put the resize to the input size and the argmax in the graph (`LabelGraph`, int32 labels out).
    """
    for name, value in (("height", height), ("width", width), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    inputs = graph_inputs(model)
    if labels and len(inputs) > 1:
        raise ValueError("labels=True puts the resize and argmax of a semantic model in the graph; BPR's output is "
                         "refined at patch level, export it without labels")
    device, dtype = model_device_dtype(model)
    example = tuple(t.to(device) for t in example_inputs(inputs, batch, height, width, dtype=dtype))
    was_training = model.training
    model.eval()
    try:
        network = LabelGraph(model).eval() if labels else model
        dim = torch.export.Dim.DYNAMIC
        # from a batch of 1 the batch axis stays 1: the tracer specialises a size of 1
        axes = {0: dim, 2: dim, 3: dim} if batch > 1 else {2: dim, 3: dim}
        with torch.no_grad():
            example_logits(model, *example)  # a model that fails eagerly says so here, not inside the tracer
            return torch.export.export(network, example, dynamic_shapes=tuple(dict(axes) for _ in example))
    finally:
        model.train(was_training)
