"""`torch.export` programs (`.pt2`): the model as an ahead-of-time graph with dynamic batch, height and width, for
PyTorch runtimes without Python model code (AOTInductor, ExecuTorch, `torch.export.load`).

The program is traced once symbolically; the sizes it accepts are what the model's shape arithmetic allows, as
recorded by the tracer: `program_input_ranges` reads them back (e.g. SegFormer needs height and width >= 61 at
least: its efficient attention reduces a 1/4 map by 8, and the tracer assumes more than one reduced column;
Swin refuses a batch of 1 when exported from a batch of 2, so export from the batch you will run). The loaded
program checks these guards on every call and says which one failed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from seglab.checkpoint import atomic_write
from seglab.export.graph import (
    LabelGraph,
    example_inputs,
    graph_inputs,
    model_device_dtype,
    trace_program,
)


def export_program(model: nn.Module, path: str | Path, height: int = 512, width: int = 512, batch: int = 2,
                   labels: bool = False, program: torch.export.ExportedProgram | None = None) -> Path:
    """Exports `model` with `torch.export` (dynamic batch, height and width) and saves the program, atomically.

    Args:
        model: a semantic model (images -> logits) or BPR (image, mask -> logits); exported in eval mode.
        path: the `.pt2` file.
        height, width, batch, labels: see `trace_program`.
        program: `trace_program`'s result for this model, to save instead of tracing again (the other arguments
            then do not apply).

    Returns:
        The path written.
    """
    path = Path(path)
    if program is None:
        program = trace_program(model, height, width, batch, labels)
    buffer = io.BytesIO()  # saved through a buffer: the archive writer wants a `.pt2` name, not the temporary one
    torch.export.save(program, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    return path


def load_program(path: str | Path) -> nn.Module:
    """The module of a saved program: call it like the model (it checks the recorded size guards)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"torch.export program not found: {path}")
    return torch.export.load(path).module()


def program_input_ranges(
    program: str | Path | torch.export.ExportedProgram,
) -> dict[str, tuple[int, int | None]]:
    """The (min, max) each dynamic input axis of a program (a `.pt2` file or a traced program) accepts, as recorded:
    `{"images.height": (61, None)}` (None: unbounded). A lower bound of 2 is torch.export's convention for a dynamic
    axis: size 1 still runs unless a guard of the program refuses it (Swin's batch, see the module docstring)."""
    if not isinstance(program, torch.export.ExportedProgram):
        program = torch.export.load(Path(program))
    names = {0: "batch", 2: "height", 3: "width"}
    ranges: dict[str, tuple[int, int | None]] = {}
    user_inputs = program.graph_signature.user_inputs
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        for axis, size in enumerate(node.meta["val"].shape):
            if axis not in names or not isinstance(size, torch.SymInt):
                continue
            symbol = size.node.expr
            bound = program.range_constraints.get(symbol)
            if bound is not None:
                upper = None if str(bound.upper) in ("int_oo", "oo") else int(bound.upper)  # unbounded
                ranges[f"{node.name}.{names[axis]}"] = (int(bound.lower), upper)
    return ranges


def check_program(model: nn.Module, path: str | Path | nn.Module,
                  sizes: Sequence[tuple[int, int]] = ((512, 512), (384, 640)), batch: int = 1, seed: int = 0) -> float:
    """Runs the saved program (a `.pt2` file, or `load_program`'s module of one) and eager PyTorch on the same random
    inputs.

    Returns:
        The largest absolute difference of the logits over all sizes (inf where either gives a NaN); for a program
        exported with `labels=True`, the largest fraction of pixels whose label differs.
    """
    program = path if isinstance(path, nn.Module) else load_program(path)
    source = "the program" if isinstance(path, nn.Module) else str(path)
    inputs = graph_inputs(model)
    device, dtype = model_device_dtype(model)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    was_training = model.training
    model.eval()
    try:
        for height, width in sizes:
            example = [t.to(device) for t in example_inputs(inputs, batch, height, width, generator, dtype)]
            with torch.no_grad():
                got = program(*example)
                labels = got.dtype == torch.int32
                expected = LabelGraph(model)(*example) if labels else model(*example)
            if got.shape != expected.shape:
                raise ValueError(f"{source} at {(batch, height, width)} gives {tuple(got.shape)}, eager PyTorch "
                                 f"{tuple(expected.shape)}: a shape was frozen at export")
            diff = float((got != expected).float().mean() if labels else (got.float() - expected.float()).abs().max())
            worst = max(worst, float("inf") if math.isnan(diff) else diff)  # a NaN on either side is no parity
    finally:
        model.train(was_training)
    return worst
