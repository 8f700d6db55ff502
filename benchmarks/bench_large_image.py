"""`seglab predict` on one very large image: peak resident memory and wall time of the whole command.

Writes a `--size` x `--size` RGB PNG (a smooth pattern; generated once, kept in `--work`), a random
`--model` checkpoint with `--classes` classes, and runs

    seglab predict --model M --num-classes K --checkpoint C --mode slide --crop-size 512 512 --stride 341 341
                   --max-pixels N --tiled --out OUT image.png

in a fresh python process, which reports its own peak RSS (`VmHWM` in /proc/self/status, read at exit; `wait4`'s
ru_maxrss would also count this process's size at the fork). Plain slide inference would hold a
(1, K, H, W) float32 accumulator (K x H x W x 4 bytes: 86 GB at 12000^2 and 150 classes); the streamed form
holds K x (crop - stride .. crop) x W floats. Nothing else should run on the machine.

    python benchmarks/bench_large_image.py --size 12000 --classes 150
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def make_image(path: Path, size: int) -> None:
    from PIL import Image

    yy, xx = np.mgrid[:size, :size].astype(np.int32)
    rgb = np.stack([(xx // 7) % 256, (yy // 5) % 256, ((xx + yy) // 11) % 256], -1).astype(np.uint8)
    del yy, xx
    Image.fromarray(rgb).save(path, compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=12000)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--model", default="segformer_b0")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--stride", type=int, default=341)
    parser.add_argument("--window-batch", type=int, default=None, help="default: seglab predict's default")
    parser.add_argument("--work", default="work_dirs/bench_large_image")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    import seglab
    from seglab.checkpoint import save_model
    from seglab.engine.bench import run_with_peak_rss

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    image = work / f"image_{args.size}.png"
    if not image.exists():
        make_image(image, args.size)
    checkpoint = work / f"{args.model}_{args.classes}.safetensors"
    if not checkpoint.exists():
        save_model(checkpoint, seglab.create_model(args.model, num_classes=args.classes))
    argv = [sys.executable, "-m", "seglab.cli.main", "predict", "--model", args.model, "--num-classes",
            str(args.classes), "--checkpoint", str(checkpoint), "--mode", "slide", "--crop-size", str(args.crop),
            str(args.crop), "--stride", str(args.stride), str(args.stride), "--max-pixels", str(args.size ** 2),
            "--tiled", "--out", str(work / "out"), str(image), "--device", "cpu"]
    if args.window_batch:
        argv += ["--window-batch", str(args.window_batch)]
    start = time.perf_counter()
    code, peak_bytes, output = run_with_peak_rss(argv[3:])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"seglab predict failed: {' '.join(argv)}\n{output}")
    peak_kib = peak_bytes // 1024
    figures = {
        "size": args.size, "classes": args.classes, "model": args.model, "crop": args.crop, "stride": args.stride,
        "window_batch": args.window_batch, "peak_rss_gib": round(peak_kib / 2**20, 2),
        "peak_rss_gb": round(peak_kib * 1024 / 1e9, 2),
        "wall_s": round(seconds, 1), "plain_accumulator_gib": round(args.classes * args.size ** 2 * 4 / 2**30, 1),
        "label_file_mib": round((work / "out" / f"{image.stem}.tif").stat().st_size / 2**20, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
