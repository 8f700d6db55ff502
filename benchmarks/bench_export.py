"""Latency of exported models against eager PyTorch, one configuration per family, interleaved in one process.

For each model (random weights, eval mode): export to ONNX (`seglab.export.export_onnx`, the torch.export-based
exporter) and to a torch.export program (`.pt2`), then time batch-1 inference at `--size` for eager PyTorch
(`torch.inference_mode`), onnxruntime (CPU execution provider, default graph optimisations, `--threads` intra-op
threads) and the loaded program, interleaved (eager, ORT, program, eager, ...) so that load from elsewhere hits
all alike. Prints medians, the ORT/eager and program/eager ratios and the max output differences; `--json` writes
them. Nothing else should run on the machine.

    python benchmarks/bench_export.py --size 256 --runs 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

FAMILIES = [  # (family, model, constructor options)
    ("SegFormer", "segformer_b0", {}),
    ("SegNeXt", "segnext_t", {}),
    ("HRNet", "fcn_hrnetv2_w18s", {}),
    ("UperNet-Swin", "upernet_swin_t", {}),
    ("CycleMLP", "fpn_cyclemlp_b1", {}),
    ("AS-MLP", "upernet_asmlp_t", {}),
    ("SETR", "setr_naive_vit_l", {}),
    ("SegViT", "segvit_vit_b", {}),
    ("Segmenter", "segmenter_vit_t", {}),
    ("MaskFormer", "maskformer_r50", {}),
    ("BPR", "bpr_hrnet18s", {}),
]


def _time_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: one per family)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import onnxruntime as ort

    import seglab
    from seglab.export import export_onnx, export_program, load_program
    from seglab.export.onnx import example_inputs, graph_inputs

    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    chosen = [f for f in FAMILIES if not args.models or f[1] in args.models]
    rows = []
    for family, name, overrides in chosen:
        kwargs = overrides if name.startswith("bpr_") else {"num_classes": 150, **overrides}
        torch.manual_seed(0)
        model = seglab.create_model(name, **kwargs).eval()
        size = 128 if name.startswith("bpr_") else args.size  # BPR refines 64-128 px boundary patches
        inputs = example_inputs(graph_inputs(model), 1, size, size, torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            onnx_path = export_onnx(model, Path(tmp) / "m.onnx", size, size)
            onnx_s = time.perf_counter() - start
            start = time.perf_counter()
            # batch 1: Swin programs traced from a batch of 2 keep a batch != 1 guard (docs/export.md)
            program = load_program(export_program(model, Path(tmp) / "m.pt2", size, size, batch=1))
            program_s = time.perf_counter() - start
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {inp.name: t.numpy() for inp, t in zip(session.get_inputs(), inputs, strict=True)}
        with torch.inference_mode():
            eager_out = model(*inputs)
            program_out = program(*inputs)
        (ort_out,) = session.run(None, feed)
        runners = {"eager": lambda m=model, x=inputs: m(*x), "onnxruntime": lambda s=session, f=feed: s.run(None, f),
                   "program": lambda p=program, x=inputs: p(*x)}
        times: dict[str, list[float]] = {k: [] for k in runners}
        with torch.inference_mode():
            for run in runners.values():  # warm-up
                run(), run()
            for _ in range(args.runs):  # interleaved
                for key, run in runners.items():
                    times[key].append(_time_ms(run))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "family": family, "model": name, "size": size, "eager_ms": round(med["eager"], 1),
            "ort_ms": round(med["onnxruntime"], 1), "program_ms": round(med["program"], 1),
            "ort_over_eager": round(med["onnxruntime"] / med["eager"], 2),
            "program_over_eager": round(med["program"] / med["eager"], 2),
            "ort_max_diff": float(abs(torch.from_numpy(ort_out) - eager_out).max()),
            "program_max_diff": float((program_out - eager_out).abs().max()),
            "onnx_export_s": round(onnx_s, 1), "program_export_s": round(program_s, 1),
        }
        rows.append(row)
        print(f"{family:13s} {name:20s} {size}px eager {row['eager_ms']:8.1f} ms  ORT {row['ort_ms']:8.1f} ms "
              f"({row['ort_over_eager']:.2f}x, diff {row['ort_max_diff']:.1e})  program {row['program_ms']:8.1f} ms "
              f"({row['program_over_eager']:.2f}x, diff {row['program_max_diff']:.1e})  export {onnx_s:.0f}+"
              f"{program_s:.0f} s", flush=True)
        del model, program, session, runners
    info = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
            "threads": args.threads, "torch": torch.__version__, "onnxruntime": ort.__version__, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
