"""CPU time of BPR refinement for one Cityscapes-sized image, split into its steps, and how proposal + NMS scale.

Part 1, `refine` on a 1024 x 2048 image with ~20 instances (seeded random discs / star-like polygons with jagged
boundaries, radii 30-150 px) and the real `bpr_hrnet18s` network (random weights, eval, inference mode): total
milliseconds (median over `--runs`) and the share of `extract` (boundaries, proposals + NMS, crops), `network`
(resizes, forward, softmax) and `paste`, from `refine`'s `timings`; plus the number of boundary pixels and patches.

Part 2, scaling: one jagged disc of growing radius (jagged alike at every radius, so the number of boundary
pixels n grows linearly with the radius) in a 4096 x 4096 image; times the boundary scoring and the NMS of
`propose_patches` separately, and the same NMS with `torchvision.ops.nms` (same result, asserted); prints, between
consecutive sizes, the ratio of n, the ratio of times and the exponent log(time ratio) / log(n ratio): about 1 is
linear, 2 would be quadratic. The boundary scoring reads the instance's bounding box (byte-wide sums), whose area
grows as n^2 for a disc: linear in the mask's pixels, the input it must read; that ratio is shown too.

    OMP_NUM_THREADS=1 python benchmarks/bench_bpr.py --threads 1 --runs 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
from torchvision.ops import nms

from seglab.instance import build_bpr, normalize_image, propose_patches, refine
from seglab.instance.bpr import NMS_IOU_INFERENCE, PATCH_SIZE, TIMING_KEYS, _instance_boundary, _nms_points


def jagged_instance(height: int, width: int, cy: float, cx: float, radius: float, rng: np.random.Generator,
                    lobes: int = 0, angles: int = 360, jitter_px: float | None = None) -> torch.Tensor:
    """(H, W) bool mask of a star-shaped region r(theta) <= R (1 + smooth lobes + jitter), drawn on its bounding
    box only (vectorised). The jitter draws a new radius every 360 / `angles` degrees, by up to 6 % of R, or by up
    to `jitter_px` pixels when given."""
    amplitude = 0.06 if jitter_px is None else jitter_px / radius
    jitter = rng.uniform(-amplitude, amplitude, angles)  # jagged boundary
    smooth = np.zeros(angles)
    t = np.linspace(0, 2 * math.pi, angles, endpoint=False)
    if lobes:
        smooth = rng.uniform(0.1, 0.3) * np.cos(lobes * t + rng.uniform(0, 2 * math.pi))
    r_of_theta = torch.from_numpy(radius * (1.0 + smooth + jitter)).float()
    reach = float(r_of_theta.max()) + 1
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, height)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, width)
    mask = torch.zeros(height, width, dtype=torch.bool)
    if y1 <= y0 or x1 <= x0:
        return mask
    ys = torch.arange(y0, y1, dtype=torch.float32)[:, None] - cy
    xs = torch.arange(x0, x1, dtype=torch.float32)[None, :] - cx
    theta = (torch.atan2(ys, xs).remainder(2 * math.pi) * (angles / (2 * math.pi))).long().clamp(max=angles - 1)
    mask[y0:y1, x0:x1] = torch.hypot(ys, xs) <= r_of_theta[theta]
    return mask


def make_scene(height: int, width: int, instances: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 RGB image (3, H, W) with `instances` coloured jagged shapes on a noisy background, and their (N, H,
    W) bool masks (later shapes occlude earlier ones, as in real predictions overlaps are allowed to stay)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(110, 20, size=(3, height, width)).clip(0, 255)
    masks = []
    for _ in range(instances):
        radius = float(rng.uniform(30, 150))
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        m = jagged_instance(height, width, cy, cx, radius, rng, lobes=int(rng.choice([0, 3, 5, 7])))
        if not m.any():
            continue
        colour = rng.uniform(0, 255, size=3)
        image[:, m.numpy()] = colour[:, None]
        masks.append(m)
    return torch.from_numpy(image.astype(np.uint8)), torch.stack(masks)


def bench_refine(args: argparse.Namespace) -> None:
    image_u8, masks = make_scene(args.height, args.width, args.instances, args.seed)
    image = normalize_image(image_u8)
    torch.manual_seed(args.seed)
    net = build_bpr(args.variant).eval()
    boundary = sum(int(_instance_boundary(m)[0].numel()) for m in masks)
    boxes, _ = propose_patches(masks, args.patch_size, args.nms_iou)
    print(f"image {args.height}x{args.width}, {masks.shape[0]} instances, {boundary} boundary pixels, "
          f"{boxes.shape[0]} patches (P {args.patch_size}, NMS {args.nms_iou}), network {args.variant} "
          f"input {net.input_size}, batch {args.batch}, threads {torch.get_num_threads()}")
    with torch.inference_mode():
        # warm-up: one network batch (allocator, oneDNN kernels) without a full refine
        s, k = net.input_size, min(args.batch, max(boxes.shape[0], 1))
        net(torch.zeros(k, 3, s, s), torch.zeros(k, 1, s, s))
        runs = []
        for _ in range(args.runs):
            timings: dict[str, float] = {}
            t0 = time.perf_counter()
            refine(image, masks, net, args.patch_size, args.nms_iou, batch=args.batch, timings=timings)
            runs.append((time.perf_counter() - t0, timings))
    totals = [t for t, _ in runs]
    median = statistics.median(totals)
    step = {k: statistics.median(tm[k] for _, tm in runs) for k in TIMING_KEYS}
    parts = ", ".join(f"{k} {1000 * v:.0f} ms ({100 * v / sum(step.values()):.1f}%)" for k, v in step.items())
    print(f"refine total {1000 * median:.0f} ms (median of {args.runs}); {parts}")
    print(f"per patch {1000 * median / max(boxes.shape[0], 1):.2f} ms")


def torchvision_nms(ys: torch.Tensor, xs: torch.Tensor, scores: torch.Tensor, patch_size: int,
                    nms_iou: float) -> torch.Tensor:
    """The same greedy NMS with `torchvision.ops.nms` (score descending, then raster order via the rank), for
    comparison: it compares every kept box with all remaining ones, O(n * kept)."""
    n = ys.numel()
    order = torch.sort(scores, descending=True, stable=True).indices
    rank_score = torch.empty(n)
    rank_score[order] = torch.arange(n, 0, -1, dtype=torch.float32)
    boxes = torch.stack([xs, ys, xs + patch_size, ys + patch_size], dim=1).float()
    return nms(boxes, rank_score, nms_iou)


def bench_scaling(args: argparse.Namespace) -> None:
    side = args.scaling_side
    rng = np.random.default_rng(args.seed)
    print(f"\nscaling: one jagged disc in a {side}x{side} image, P {args.patch_size}, NMS {args.nms_iou}")
    print("| radius | mask px | boundary px n | kept | boundary ms | NMS ms | proposal total ms | torchvision NMS ms |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for radius in args.radii:
        # locally alike at every size: a new radius every ~8 px of arc, jitter up to 6 px
        angles = max(int(2 * math.pi * radius / 8), 8)
        mask = jagged_instance(side, side, side / 2, side / 2, radius, rng, angles=angles, jitter_px=6.0)
        best = [math.inf, math.inf, math.inf, math.inf]
        for _ in range(args.scaling_runs):
            t0 = time.perf_counter()
            ys, xs, scores = _instance_boundary(mask)
            t1 = time.perf_counter()
            keep = _nms_points(ys, xs, scores, torch.zeros_like(ys), args.patch_size, args.nms_iou)
            t2 = time.perf_counter()
            propose_patches(mask[None], args.patch_size, args.nms_iou)
            t3 = time.perf_counter()
            reference = torchvision_nms(ys, xs, scores, args.patch_size, args.nms_iou)
            t4 = time.perf_counter()
            assert torch.equal(reference, keep), "local NMS differs from torchvision's"
            best = [min(best[0], t1 - t0), min(best[1], t2 - t1), min(best[2], t3 - t2), min(best[3], t4 - t3)]
        n = int(ys.numel())
        rows.append((radius, int(mask.sum()), n, int(keep.numel()), *best))
        print(f"| {radius} | {int(mask.sum())} | {n} | {int(keep.numel())} | {1000 * best[0]:.2f} | "
              f"{1000 * best[1]:.2f} | {1000 * best[2]:.2f} | {1000 * best[3]:.2f} |")
    print("\nbetween consecutive sizes: n ratio, time ratios and exponent log(t ratio) / log(n ratio) "
          "(1 linear, 2 quadratic)")
    pairs = list(zip(rows, rows[1:], strict=False))
    if len(rows) > 2:  # the end points too: one exponent over the whole range, less noisy than the steps
        pairs.append((rows[0], rows[-1]))
    for a, b in pairs:
        rn = b[2] / a[2]
        cells = []
        for name, i in (("boundary", 4), ("NMS", 5), ("proposal", 6), ("torchvision NMS", 7)):
            rt = b[i] / a[i]
            cells.append(f"{name} x{rt:.2f} (exp {math.log(rt) / math.log(rn):.2f})")
        print(f"r {a[0]} -> {b[0]}: n x{rn:.2f}, mask px x{b[1] / a[1]:.2f}; " + "; ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--variant", default="bpr_hrnet18s")
    parser.add_argument("--patch-size", type=int, default=PATCH_SIZE)
    parser.add_argument("--nms-iou", type=float, default=NMS_IOU_INFERENCE)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--radii", type=int, nargs="+", default=[100, 200, 400, 800, 1600])
    parser.add_argument("--scaling-side", type=int, default=4096)
    parser.add_argument("--scaling-runs", type=int, default=3)
    parser.add_argument("--skip-refine", action="store_true", help="only the scaling check")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_refine:
        bench_refine(args)
    bench_scaling(args)


if __name__ == "__main__":
    main()
