"""Layout helpers between token (B, N, C) and map (B, C, H, W) layouts, and one resize."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nchw_to_nlc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def nlc_to_nchw(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W), a channels-last view (no copy).

    A view keeps the tokens' memory order, which convolutions then run on directly; `transpose(1, 2).reshape`
    would hand them a layout that is neither NCHW- nor NHWC-contiguous and make every conv copy its input.
    """
    return x.reshape(x.shape[0], height, width, x.shape[-1]).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of a float map; a no-op when the size already matches (decided per call, so not while
    exporting: a branch on symbolic sizes would freeze the graph to the example's case)."""
    if not torch.compiler.is_exporting() and tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, size)` that also exports to ONNX with dynamic input sizes.

    ONNX has no adaptive pooling: exporters turn it into a fixed-kernel average pool computed from the example's
    size, which is wrong at other sizes. While exporting, the pooling is written as two averaging matrices built
    from the (symbolic) size with PyTorch's bins `[floor(i * n / s), ceil((i + 1) * n / s))`; otherwise the native op.
    """
    if not torch.compiler.is_exporting():
        return F.adaptive_avg_pool2d(x, size)
    rows = _pooling_matrix(x.shape[-2], size, x)  # (size, H)
    cols = _pooling_matrix(x.shape[-1], size, x)  # (size, W)
    return torch.einsum("ih,bchw,jw->bcij", rows, x, cols)


def _pooling_matrix(length: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """(size, length): row i averages the inputs of adaptive pooling bin i."""
    bins = torch.arange(size, device=like.device)
    start = bins * length // size
    end = ((bins + 1) * length + size - 1) // size  # ceil division with non-negative operands
    index = torch.arange(length, device=like.device)
    inside = (index[None, :] >= start[:, None]) & (index[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)
