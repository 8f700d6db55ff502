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
    """Bilinear resize of a float map; a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
