"""CPU speed of seglab's shift-based MLP operators against the original formulations, one process, interleaved.

- Cycle FC: seglab's zero pad + gather + Linear (`seglab.backbones.cyclemlp.CycleFC`, channels-last) against the
  original's `torchvision.ops.deform_conv2d` with the fixed offsets and a 1x1 kernel (NCHW), same weights; both
  directions of the block ((1, 3) and (3, 1)).
- Axial shift: seglab's one zero pad + one narrowed slice per group (`seglab.backbones.asmlp.axial_shift`) against
  the original's pure-torch form (pad, chunk into S groups, roll each, concatenate, crop), on both axes.

Medians over interleaved runs, max abs difference, and the ratio original / seglab (> 1: seglab is faster).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_mlp_ops.py --size 128 --channels 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from seglab.backbones.asmlp import axial_shift
from seglab.backbones.cyclemlp import CycleFC, cycle_offsets


def original_axial_shift(x: torch.Tensor, shift_size: int, dim: int) -> torch.Tensor:
    """The original's pure-torch shift: pad, chunk into groups of ceil(C / S), roll group k by k - S // 2, crop."""
    pad = shift_size // 2
    height, width = x.shape[-2:]
    x = F.pad(x, (pad, pad, pad, pad))
    groups = torch.chunk(x, shift_size, dim=1)
    x = torch.cat([torch.roll(g, k - pad, dims=dim) for g, k in zip(groups, range(shift_size), strict=False)], 1)
    return x[:, :, pad:pad + height, pad:pad + width]


def timed(functions: dict[str, Callable[[], torch.Tensor]], runs: int, warmup: int) -> dict[str, float]:
    """Interleaved medians in milliseconds."""
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in functions.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in functions}
        for _ in range(runs):
            for name, fn in functions.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="square map side (128: stage 1 of a 512 input)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, c, s = args.batch, args.channels, args.size
    results: dict[str, float] = {}

    x = torch.randn(b, c, s, s)
    x_last = x.permute(0, 2, 3, 1).contiguous()  # seglab's CycleMLP works channels-last
    for span in ((1, 3), (3, 1)):
        layer = CycleFC(c, c, span).eval()
        offset = cycle_offsets(c, span).expand(b, -1, s, s)
        weight, bias = layer.weight, layer.bias
        ms = timed({
            "seglab": lambda layer=layer: layer(x_last),
            "deform_conv2d": lambda offset=offset, weight=weight, bias=bias: deform_conv2d(x, offset, weight, bias),
        }, args.runs, args.warmup)
        with torch.no_grad():
            diff = (layer(x_last).permute(0, 3, 1, 2) - deform_conv2d(x, offset, weight, bias)).abs().max().item()
        ratio = ms["deform_conv2d"] / ms["seglab"]
        print(f"CycleFC {span}: seglab {ms['seglab']:.2f} ms, deform_conv2d {ms['deform_conv2d']:.2f} ms, "
              f"ratio {ratio:.2f}x, max abs diff {diff:.2e}")
        results[f"cyclefc_{span[0]}x{span[1]}_ratio"] = ratio

    x = torch.randn(b, 2 * c, s // 2, s // 2)  # an AS-MLP stage-1-like map
    for dim, axis in ((3, "W"), (2, "H")):
        ms = timed({
            "seglab": lambda dim=dim: axial_shift(x, 5, dim),
            "original": lambda dim=dim: original_axial_shift(x, 5, dim),
        }, args.runs, args.warmup)
        diff = (axial_shift(x, 5, dim) - original_axial_shift(x, 5, dim)).abs().max().item()
        ratio = ms["original"] / ms["seglab"]
        print(f"axial shift along {axis} (C={2 * c}, S=5): seglab {ms['seglab']:.3f} ms, original {ms['original']:.3f} "
              f"ms, ratio {ratio:.2f}x, max abs diff {diff:.1e}")
        results[f"axial_shift_{axis}_ratio"] = ratio
    return results


if __name__ == "__main__":
    main()
