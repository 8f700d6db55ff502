"""CPU inference latency of seglab models against each other, one process, interleaved runs.

Compares architectures (e.g. SegNeXt-T against SegFormer-B0, the pair the SegNeXt paper puts side by side),
not implementations: every model is seglab's, random weights, eval mode, `torch.inference_mode`. Timings are
interleaved (model A, model B, A, B, ...) so that load from other processes hits all alike; medians are
reported with the ratio to the first model, parameters and GFLOPs (multiply-adds, `seglab.tools.flops`).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_latency.py segnext_t segformer_b0 --size 512 --runs 20

Also `--train` times one training step (forward + backward, batch `--batch`) instead of inference.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from seglab import create_model
from seglab.tools.flops import count_flops, count_params


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["segnext_t", "segformer_b0"], help="registered model names")
    parser.add_argument("--size", type=int, default=512, help="square input side")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per model first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--train", action="store_true", help="time a training step (forward + backward)")
    args = parser.parse_args(argv)
    if len(args.models) < 1:
        parser.error("give at least one model name")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {name: create_model(name, num_classes=args.num_classes).train(args.train) for name in args.models}
    x = torch.randn(args.batch, 3, args.size, args.size)

    def step(model: torch.nn.Module) -> None:
        if args.train:
            model.zero_grad(set_to_none=True)
            model(x).float().mean().backward()
        else:
            with torch.inference_mode():
                model(x)

    for _ in range(args.warmup):
        for model in models.values():
            step(model)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.runs):
        for name, model in models.items():
            start = time.perf_counter()
            step(model)
            times[name].append(time.perf_counter() - start)

    what = f"training step (batch {args.batch})" if args.train else f"inference (batch {args.batch})"
    print(f"{args.size}x{args.size} {what}, {args.threads} threads, {args.runs} interleaved runs after "
          f"{args.warmup} warm-up; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    first = statistics.median(times[args.models[0]])
    results = {}
    for name, model in models.items():
        median = statistics.median(times[name])
        params = count_params(model) / 1e6
        gflops = count_flops(create_model(name, num_classes=args.num_classes), args.size) / 1e9
        results[f"{name}_ms"] = median * 1000
        print(f"{name:16s} median {median * 1000:8.1f} ms  (min {min(times[name]) * 1000:7.1f})  "
              f"{params:6.2f} M params  {gflops:6.2f} GFLOPs  ratio to {args.models[0]} {median / first:.2f}x")
    return results


if __name__ == "__main__":
    main()
