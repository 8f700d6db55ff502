"""Stochastic depth (DropPath) and the linear drop-path schedule used by every hierarchical backbone."""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Drops whole residual branches per sample during training (stochastic depth).

    Args:
        drop_prob: probability of dropping the branch for a sample.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_rates(drop_path_rate: float, depths: tuple[int, ...] | list[int]) -> list[list[float]]:
    """Per-block rates `linspace(0, drop_path_rate, sum(depths))`, split by stage."""
    rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
    out, start = [], 0
    for depth in depths:
        out.append(rates[start : start + depth])
        start += depth
    return out
