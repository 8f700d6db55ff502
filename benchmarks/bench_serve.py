"""Load test of `seglab serve`: a few hundred requests from a local client at concurrency 1, 4 and 16; p50 / p99
latency, throughput, failed requests and the server process's resident memory before and after each level (flat
memory: no growth with load). The server runs as `seglab serve` in its own process on 127.0.0.1.

    python benchmarks/bench_serve.py --requests 300 --size 128 [--checkpoint work_dirs/demo/best.safetensors]

Without --checkpoint the model is SegFormer-B0 (6 classes) with random weights: the serving cost is the same.
Prints a Markdown table (docs/serve.md) and, with --json, writes the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(count: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


async def _level(url: str, images: list[bytes], requests: int, concurrency: int, deadline: float) -> dict:
    import httpx

    latencies: list[float] = []
    failures: dict[int | str, int] = {}
    sent = 0

    async def worker(client):
        nonlocal sent
        while sent < requests and time.monotonic() < deadline:
            data = images[sent % len(images)]
            sent += 1
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/predict", content=data)
                code: int | str = response.status_code
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            if code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                failures[code] = failures.get(code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "ok": len(latencies), "failed": sum(failures.values()), "failures": failures,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            "throughput": len(latencies) / elapsed, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--checkpoint", help="a SegFormer-B0 checkpoint (default: random weights, 6 classes)")
    parser.add_argument("--max-seconds", type=float, default=300, help="time bound per level")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            import seglab
            from seglab.checkpoint import save_model

            checkpoint = str(Path(tmp) / "b0.safetensors")
            save_model(checkpoint, seglab.create_model("segformer_b0", num_classes=6))
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        server = subprocess.Popen([sys.executable, "-m", "seglab.cli", "serve", "--model", "segformer_b0",
                                   "--checkpoint", checkpoint, "--port", str(port), "--device", "cpu",
                                   "--log-level", "warning"], env=env, cwd=ROOT)
        try:
            import httpx

            for _ in range(600):
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            images = _images(16, args.size)
            asyncio.run(_level(url, images, 20, 4, time.monotonic() + 60))  # warm-up
            rows = []
            for level in (int(v) for v in args.levels.split(",")):
                before = _rss_mib(server.pid)
                result = asyncio.run(_level(url, images, args.requests, level, time.monotonic() + args.max_seconds))
                result.update(rss_before_mib=before, rss_after_mib=_rss_mib(server.pid))
                rows.append(result)
            health = httpx.get(f"{url}/healthz").json()["models"]["segformer_b0"]
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"seglab serve, SegFormer-B0, {args.size}x{args.size} PNG, {args.requests} requests a level, "
          f"{os.cpu_count()} cores, torch threads {args.threads}")
    print("| concurrency | requests ok | failed | p50 (ms) | p99 (ms) | requests/s | server RSS before -> after "
          "(MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['ok']} | {r['failed']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['throughput']:.1f} | {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} |")
    print(f"batches: {health['batches']} for {health['requests']} requests (largest {health['largest_batch']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"levels": rows, "server": health}, indent=2))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
