"""Token merging for attention over a 2-D token grid (SegFormer++, Kienzle et al. 2024, arXiv:2405.14467).

Bipartite soft matching on a grid (ToMe, Bolya et al. 2023, in the 2-D form of ToMe for Stable Diffusion): the
tokens are split into destinations, the top-left token of every `stride x stride` cell, and sources, all the others.
Each source is matched to its most similar destination (cosine similarity of the features); the `r` best-matched
sources are averaged into their destinations (an unweighted mean of the destination and the sources it receives)
and dropped. Attention then runs on the shorter sequence: merged keys/values shorten what every query attends to;
merged queries are attended once and their output copied back to every token they absorbed (`unmerge`).
Neighbour merging (`pool`) is the simpler form: queries average-pooled in `pool x pool` cells and the output
repeated over each cell (nearest upsampling).

Written for seglab from the papers and the facts of the official code (KieDani/SegformerPlusPlus, which calls
tomesd's `bipartite_soft_matching_random2d` with `no_rand=True`: the top-left destination, as here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class StageMerging:
    """Token merging in the attention of one encoder stage.

    Attributes:
        kv_ratio: fraction of the key/value tokens merged away (0: none).
        kv_stride: destination cell size for the keys/values (one destination per `kv_stride x kv_stride`).
        q_ratio: fraction of the query tokens merged before attention and restored after it (0: none).
        q_stride: destination cell size for the queries.
        q_pool: neighbour merging of the queries in `q_pool x q_pool` cells (0: none; excludes `q_ratio`).
    """

    kv_ratio: float = 0.0
    kv_stride: int = 2
    q_ratio: float = 0.0
    q_stride: int = 4
    q_pool: int = 0

    def __post_init__(self) -> None:
        for name in ("kv_ratio", "q_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"StageMerging.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.q_ratio and self.q_pool:
            raise ValueError("StageMerging: q_ratio (bipartite matching) and q_pool (neighbour merging) exclude "
                             "each other")
        if self.kv_stride < 1 or self.q_stride < 1 or self.q_pool < 0:
            raise ValueError(f"StageMerging strides must be positive, got {self}")


# The official presets (SegFormer++'s `tome_presets`), one entry per MiT stage. `fast` uses the published ratios and
# strides with the same deterministic matching as `hq` (the official `bsm_r2D` mode is not in its released code).
TOKEN_MERGING_PRESETS: dict[str, tuple[StageMerging, ...]] = {
    "hq": (StageMerging(kv_ratio=0.6, kv_stride=2), StageMerging(kv_ratio=0.6, kv_stride=2),
           StageMerging(q_ratio=0.8, q_stride=4), StageMerging(q_ratio=0.8, q_stride=4)),
    "fast": (StageMerging(kv_ratio=0.9, kv_stride=4), StageMerging(kv_ratio=0.9, kv_stride=4),
             StageMerging(q_ratio=0.9, q_stride=4), StageMerging(q_ratio=0.9, q_stride=4)),
    "n2d": (StageMerging(q_pool=2),) * 4,
}


def token_merging_preset(name: str | None) -> tuple[StageMerging, ...] | None:
    """The per-stage settings of a preset name; None for None."""
    if name is None:
        return None
    if name not in TOKEN_MERGING_PRESETS:
        raise ValueError(f"unknown token merging preset {name!r}; choose one of {sorted(TOKEN_MERGING_PRESETS)}")
    return TOKEN_MERGING_PRESETS[name]


class GridMerge:
    """One bipartite soft matching of a (B, height x width, C) token grid: `merge` shortens a sequence laid out like
    `metric`, `unmerge` gives each original token the output of the token it was merged into.

    Args:
        metric: (B, N, C) features the similarity is measured on, N = height x width, row-major.
        height, width: the grid.
        stride: destination cell size.
        r: sources to merge (clipped to the number of sources); 0 makes `merge` and `unmerge` the identity.
    """

    def __init__(self, metric: torch.Tensor, height: int, width: int, stride: int, r: int) -> None:
        batch, num_tokens, _ = metric.shape
        if num_tokens != height * width:
            raise ValueError(f"GridMerge: {num_tokens} tokens do not form a {height}x{width} grid")
        self.num_tokens = num_tokens
        is_dst = torch.zeros(height, width, dtype=torch.bool, device=metric.device)
        cells_y, cells_x = height // stride, width // stride  # cells cut by the border have no destination
        is_dst[: cells_y * stride : stride, : cells_x * stride : stride] = True
        is_dst = is_dst.flatten()
        self.dst_index = is_dst.nonzero().squeeze(1)
        self.src_index = (~is_dst).nonzero().squeeze(1)
        self.r = min(r, len(self.src_index)) if len(self.dst_index) else 0
        if self.r <= 0:
            return
        normed = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scores = normed[:, self.src_index] @ normed[:, self.dst_index].transpose(1, 2)  # (B, sources, destinations)
        best, best_dst = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True, stable=True)
        self.merged = order[:, : self.r]  # positions in the source list, most similar first
        self.kept = order[:, self.r :]
        self.merged_dst = best_dst.gather(1, self.merged)  # (B, r): destination of each merged source

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N - r, C): the kept sources, then the destinations (each the mean of itself and the
        sources merged into it)."""
        if self.r <= 0:
            return x
        channels = x.shape[-1]
        src, dst = x[:, self.src_index], x[:, self.dst_index]
        kept = src.gather(1, self.kept[..., None].expand(-1, -1, channels))
        moved = src.gather(1, self.merged[..., None].expand(-1, -1, channels))
        dst = dst.scatter_reduce(1, self.merged_dst[..., None].expand(-1, -1, channels), moved, reduce="mean")
        return torch.cat([kept, dst], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, N - r, C') -> (B, N, C'): every token gets the output of the token it went into."""
        if self.r <= 0:
            return y
        batch, _, channels = y.shape
        num_kept = self.kept.shape[1]
        kept, dst = y[:, :num_kept], y[:, num_kept:]
        out = y.new_empty(batch, self.num_tokens, channels)
        out[:, self.dst_index] = dst
        src_positions = self.src_index[self.kept]  # (B, kept): grid positions
        out.scatter_(1, src_positions[..., None].expand(-1, -1, channels), kept)
        merged_positions = self.src_index[self.merged]
        from_dst = dst.gather(1, self.merged_dst[..., None].expand(-1, -1, channels))
        out.scatter_(1, merged_positions[..., None].expand(-1, -1, channels), from_dst)
        return out


def pool_tokens(x: torch.Tensor, height: int, width: int, pool: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Neighbour merging: (B, height x width, C) averaged in `pool x pool` cells (partial cells at the border
    average what they hold); returns the pooled tokens and their grid."""
    grid = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)
    pooled = F.avg_pool2d(grid, pool, pool, ceil_mode=True)
    return pooled.flatten(2).transpose(1, 2), (pooled.shape[-2], pooled.shape[-1])


def unpool_tokens(y: torch.Tensor, grid: tuple[int, int], height: int, width: int, pool: int) -> torch.Tensor:
    """The inverse of `pool_tokens` for outputs: each cell's output repeated over its tokens."""
    maps = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], *grid)
    maps = maps.repeat_interleave(pool, dim=2).repeat_interleave(pool, dim=3)[..., :height, :width]
    return maps.flatten(2).transpose(1, 2)
