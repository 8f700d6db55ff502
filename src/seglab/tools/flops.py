"""Parameter counts, FLOPs and feature shapes of segmentation models.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode`, which sees every matrix multiply and
convolution the model runs (attention included) and counts one multiply-add as 2 FLOPs. Segmentation papers
(SegFormer, SegNeXt, Swin, ...) report "GFLOPs" measured with fvcore/mmcv-style counters that count one
multiply-add as 1. `count_flops` returns that paper convention: multiply-adds (MACs), i.e. FlopCounterMode's
total / 2. Element-wise operations, normalisation, softmax and resizing are not counted (they add a few
percent in mmcv's counter).

Models are built and run on the meta device where possible (no memory, no compute: only shapes flow), and
on the CPU otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# NOTE: FlopCounterMode knows the CUDA attention kernels only; on the CPU `F.scaled_dot_product_attention`
# dispatches to this op, which would otherwise count as zero.
_CUSTOM_FLOPS: dict[Any, Any] = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM_FLOPS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _device_of(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once).

    Args:
        model: any module (meta-device models work).
        trainable_only: count only parameters with `requires_grad`.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(
    model: nn.Module, size: int | Sequence[int] = (512, 512), batch: int = 1, in_channels: int = 3
) -> int:
    """Multiply-adds of one inference forward pass, the unit papers call "FLOPs".

    Runs `model(x)` in eval mode under `FlopCounterMode` with `x` of shape (batch, in_channels, H, W) on the
    model's device (the meta device costs nothing). Multiply by 2 for FLOPs in the strict sense.

    Args:
        model: a segmentation model (or any module taking one NCHW tensor).
        size: input (height, width), or one side.
        batch: batch size.
        in_channels: input channels.
    """
    height, width = _pair(size)
    x = torch.zeros(batch, in_channels, height, width, device=_device_of(model))
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS)
    was_training = model.training
    # a parameter view made under no_grad still requires grad but has no grad_fn, which FlopCounterMode's module
    # tracker cannot hook (MaskFormer's expanded query embedding): count with gradients off on the parameters
    grad_params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        for p in grad_params:
            p.requires_grad_(False)
        with counter, torch.no_grad():
            model(x)
    finally:
        for p in grad_params:
            p.requires_grad_(True)
        model.train(was_training)
    return counter.get_total_flops() // 2


def stage_shapes(
    model: nn.Module, size: int | Sequence[int] = (512, 512), batch: int = 1, in_channels: int = 3
) -> list[tuple[str, tuple[int, ...]]]:
    """Shapes of the backbone outputs (`backbone.i`) and of the logits (`logits`) for one input size.

    Args:
        model: a model with `model.backbone(x) -> list[Tensor]` (the backbone contract).
        size: input (height, width), or one side.
        batch: batch size.
        in_channels: input channels.
    """
    if not hasattr(model, "backbone"):
        raise TypeError(f"{type(model).__name__} has no `backbone`; stage_shapes needs an EncoderDecoder-like model")
    height, width = _pair(size)
    x = torch.zeros(batch, in_channels, height, width, device=_device_of(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = model.backbone(x)
            logits = model(x)
    finally:
        model.train(was_training)
    shapes = [(f"backbone.{i}", tuple(f.shape)) for i, f in enumerate(features)]
    if isinstance(logits, torch.Tensor):
        shapes.append(("logits", tuple(logits.shape)))
    return shapes


def _build(name: str, device: str, num_classes: int | None) -> nn.Module:
    from seglab.registry import create_model

    with torch.device(device):
        return create_model(name, num_classes=num_classes)


def model_table(
    names: Sequence[str], size: int | Sequence[int] = (512, 512), num_classes: int | None = None
) -> list[dict[str, Any]]:
    """One row per registered model: `name, params_m, published_params_m, gflops, device`, for
    `seglab.catalog.format_model_table`.

    `gflops` is in the paper convention (`count_flops` / 1e9: giga multiply-adds) at `size`. Models are built
    on the meta device; a model that cannot run there is built and run on the CPU (`device` says which).

    Args:
        names: registered model names (see `seglab.list_models()`).
        size: input (height, width), or one side.
        num_classes: output classes; default each model's own (150 for ADE20K models).
    """
    from seglab.registry import get_entry

    rows = []
    for name in names:
        entry = get_entry(name)
        row: dict[str, Any] = {"name": name, "task": entry.task}
        if entry.task != "semantic":  # detections or patch refinement: no single-image forward to count
            model = _build(name, "meta", num_classes)
            row.update(params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                       published_params_m=entry.published_params_m, gflops=None, device="meta")
            rows.append(row)
            continue
        try:
            model, device = _build(name, "meta", num_classes), "meta"
            flops = count_flops(model, size)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            model, device = _build(name, "cpu", num_classes), "cpu"
            flops = count_flops(model, size)
        row.update(params_m=count_params(model) / 1e6, published_params_m=entry.published_params_m,
                   gflops=flops / 1e9, device=device)
        rows.append(row)
    return rows
