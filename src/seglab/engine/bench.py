"""`seglab bench`: how fast a registered model runs here, measured the same way for every model.

For one model at one input size: the median and p90 latency of a batch-1 forward (after warm-up, in inference
mode), the throughput at a larger batch, the process's peak resident memory, the model's multiply-adds
(`seglab.tools.flops`, the papers' GFLOPs) turned into achieved GFLOP/s and set against a float32 matmul ceiling
measured in the same process, and the `seglab predict` pipeline split into decode (PNG -> uint8), preprocess
(resize + normalise), model and postprocess (resize to the image + argmax + writing the indexed PNG). With
`--compare`, the same model in a peer library with the same weights (`seglab.engine.peers`), timed interleaved,
with the speed ratio and the output difference. Timings vary between processes and machines; the figures are for
comparing runs made side by side.
"""

from __future__ import annotations

import io
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from seglab.data.datasets import read_image
from seglab.data.transforms import TestTransform
from seglab.inference import resized_labels
from seglab.registry import create_model, get_entry
from seglab.tools.flops import count_flops
from seglab.tools.visualize import make_palette, save_label_png


def _times(fn: Callable[[], Any], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between the sorted values."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def matmul_ceiling(n: int = 1024, runs: int = 5) -> float:
    """Float32 FLOP/s of an n x n matmul on this process's threads: the ceiling achieved GFLOP/s are read against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / statistics.median(_times(lambda: a @ b, runs, warmup=2))


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if platform.system() == "Darwin" else peak / 1024


# run in a fresh interpreter: `seglab ARGS`, then the process's own high-water mark (VmHWM, reset at exec) on stderr
_PEAK_REPORTING_MAIN = ("import atexit, sys\n"
                        "def report():\n"
                        "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
                        "    print('VmHWM_KIB', hwm, file=sys.stderr)\n"
                        "atexit.register(report)\n"
                        "from seglab.cli.main import main\n"
                        "sys.exit(main(sys.argv[1:]))\n")


def run_with_peak_rss(args: list[str]) -> tuple[int, int, str]:
    """Runs `seglab ARGS` in a fresh Python process (Linux): its exit code, its own peak RSS in bytes (not counting
    the calling process, which `wait4`'s ru_maxrss would at the fork) and its stdout + stderr."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _PEAK_REPORTING_MAIN, *args], capture_output=True, text=True,
                          check=False)
    peaks = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VmHWM_KIB")]
    return proc.returncode, int(peaks[-1]) * 1024 if peaks else 0, proc.stdout + proc.stderr


@torch.inference_mode()
def bench_model(name: str, size: tuple[int, int] = (512, 512), runs: int = 10, warmup: int = 2,
                batch: int = 4, num_classes: int | None = None) -> dict[str, Any]:
    """Latency, throughput, memory, FLOP rate and the predict pipeline of `name` (random weights, eval mode).

    Args:
        name: a registered semantic model.
        size: input (height, width).
        runs: timed repetitions of each measurement (after `warmup` untimed ones).
        batch: batch size of the throughput measurement.
        num_classes: output classes (default the model's).

    Returns:
        A JSON-able dict: `latency_ms` {median, p90}, `throughput_ips`, `peak_rss_mb`, `gmacs`, `achieved_gflops`,
        `matmul_ceiling_gflops`, `pipeline_ms` {decode, preprocess, model, postprocess}, and the settings.
    """
    entry = get_entry(name)
    if entry.task != "semantic":
        raise ValueError(f"seglab bench times semantic models (images -> logits); the task of {name} is {entry.task}")
    height, width = size
    model = create_model(name, num_classes=num_classes).eval()
    x = torch.randn(1, 3, height, width)
    latency = _times(lambda: model(x), runs, warmup)
    xb = torch.randn(batch, 3, height, width)
    throughput = _times(lambda: model(xb), max(1, runs // 2), 1)
    macs = count_flops(model, size)
    ceiling = matmul_ceiling()
    median = statistics.median(latency)

    # the predict pipeline on a random PNG of this size
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    palette = make_palette(model.num_classes)
    transform = TestTransform(scale=(max(size), min(size)))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "image.png"
        source.write_bytes(buffer.getvalue())
        image = read_image(source)
        inputs = transform(image)[0][None]
        logits = model(inputs)

        def postprocess():  # what `predict` does after the model in whole mode, then the label PNG
            labels = resized_labels(logits, (height, width), align_corners=model.align_corners)
            save_label_png(Path(tmp) / "labels.png", labels[0].numpy(), palette)

        pipeline = {
            "decode": statistics.median(_times(lambda: read_image(source), runs, 1)),
            "preprocess": statistics.median(_times(lambda: transform(image), runs, 1)),
            "model": statistics.median(_times(lambda: model(inputs), runs, 1)),
            "postprocess": statistics.median(_times(postprocess, runs, 1)),
        }
    return {
        "model": name, "size": [height, width], "threads": torch.get_num_threads(), "runs": runs,
        "latency_ms": {"median": 1000 * median, "p90": 1000 * percentile(latency, 90)},
        "throughput_ips": batch / statistics.median(throughput), "batch": batch,
        "peak_rss_mb": peak_rss_mb(), "gmacs": macs / 1e9,
        "achieved_gflops": 2 * macs / median / 1e9, "matmul_ceiling_gflops": ceiling / 1e9,
        "pipeline_ms": {k: 1000 * v for k, v in pipeline.items()},
        "machine": f"{platform.machine()} {platform.processor()}".strip(), "torch": torch.__version__,
    }


@torch.inference_mode()
def compare_peer(name: str, size: tuple[int, int] = (512, 512), runs: int = 10, warmup: int = 2,
                 num_classes: int = 150) -> dict[str, Any]:
    """seglab's `name` against the same model in a peer library (`seglab.engine.peers`), same weights, batch 1,
    timed interleaved (seglab, peer, seglab, ...) in this process so that outside load hits both alike.

    Returns:
        A JSON-able dict: the peer library and version, both medians and p90s, the ratio (seglab / peer) and the
        max absolute output difference (with the peer output's largest magnitude for scale).
    """
    from seglab.engine.peers import build_peer

    peer = build_peer(name, num_classes)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    ours_out, peer_out = peer.run_ours(x), peer.run_peer(x)
    for _ in range(warmup):
        peer.run_ours(x), peer.run_peer(x)
    ours_times, peer_times = [], []
    for _ in range(runs):
        ours_times += _times(lambda: peer.run_ours(x), 1, 0)
        peer_times += _times(lambda: peer.run_peer(x), 1, 0)
    ours_ms, peer_ms = 1000 * statistics.median(ours_times), 1000 * statistics.median(peer_times)
    return {
        "model": name, "size": list(size), "runs": runs, "threads": torch.get_num_threads(),
        "peer": peer.library, "peer_version": peer.version,
        "seglab_ms": {"median": ours_ms, "p90": 1000 * percentile(ours_times, 90)},
        "peer_ms": {"median": peer_ms, "p90": 1000 * percentile(peer_times, 90)},
        "ratio": ours_ms / peer_ms, "max_abs_diff": float((ours_out - peer_out).abs().max()),
        "peer_output_max": float(peer_out.abs().max()),
    }


def format_compare(result: dict[str, Any]) -> str:
    """`compare_peer`'s result in two lines."""
    h, w = result["size"]
    ours, theirs = result["seglab_ms"], result["peer_ms"]
    return (f"{result['model']} at {h}x{w} vs {result['peer']} {result['peer_version']} (same weights, batch 1, "
            f"{result['runs']} interleaved runs, {result['threads']} threads)\n"
            f"  seglab {ours['median']:.1f} ms (p90 {ours['p90']:.1f}), {result['peer']} {theirs['median']:.1f} ms "
            f"(p90 {theirs['p90']:.1f}): ratio {result['ratio']:.2f}, max output diff "
            f"{result['max_abs_diff']:.1e} (outputs up to {result['peer_output_max']:.2g})")


def format_bench(result: dict[str, Any]) -> str:
    """`bench_model`'s result as a few readable lines."""
    lat, pipe = result["latency_ms"], result["pipeline_ms"]
    h, w = result["size"]
    share = result["achieved_gflops"] / result["matmul_ceiling_gflops"]
    return "\n".join([
        f"{result['model']} at {h}x{w}, {result['threads']} threads, {result['machine']}, torch {result['torch']}",
        f"  latency (batch 1): median {lat['median']:.1f} ms, p90 {lat['p90']:.1f} ms ({result['runs']} runs)",
        f"  throughput (batch {result['batch']}): {result['throughput_ips']:.2f} images/s",
        f"  {result['gmacs']:.2f} GMACs -> {result['achieved_gflops']:.1f} GFLOP/s achieved, matmul ceiling "
        f"{result['matmul_ceiling_gflops']:.1f} GFLOP/s ({share:.0%})",
        f"  predict pipeline: decode {pipe['decode']:.2f} ms, preprocess {pipe['preprocess']:.2f} ms, model "
        f"{pipe['model']:.2f} ms, postprocess (resize, argmax, PNG) {pipe['postprocess']:.2f} ms",
        f"  peak RSS {result['peak_rss_mb']:.0f} MB",
    ])
