"""seglab SegFormer vs Hugging Face transformers SegFormer on CPU, same weights, one process.

The HF model is built with random weights, converted with `seglab.convert` (source `hf`) and loaded `strict=True`
into the seglab model, so both compute the same function. Timings are interleaved (seglab, HF, seglab, HF, ...)
so that load from other processes hits both alike; medians are reported.

    python benchmarks/bench_segformer.py --variant b0 --size 512 --runs 20 --threads 2

On a machine shared with other jobs, run with `OMP_WAIT_POLICY=PASSIVE`: with the default spinning OpenMP threads,
every parallel region waits for a descheduled sibling thread and both models slow down ~10x, erratically.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from seglab import create_model
from seglab.backbones.mit import MIT_CONFIGS
from seglab.convert import convert_checkpoint
from seglab.models.segformer import SEGFORMER_VARIANTS


def build_pair(variant: str, num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(seglab model, transformers model) of `variant` sharing random weights, in eval mode."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    mit = MIT_CONFIGS[variant]
    config = SegformerConfig(
        num_labels=num_classes,
        hidden_sizes=list(mit.embed_dims),
        depths=list(mit.depths),
        num_attention_heads=list(mit.num_heads),
        sr_ratios=list(mit.sr_ratios),
        decoder_hidden_size=SEGFORMER_VARIANTS[variant][0],
    )
    torch.manual_seed(0)
    hf = SegformerForSemanticSegmentation(config).eval()
    result = convert_checkpoint(hf.state_dict(), "hf", f"segformer_{variant}")
    ours = create_model(f"segformer_{variant}", num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)
    return ours, hf


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="b0", choices=sorted(MIT_CONFIGS))
    parser.add_argument("--size", type=int, default=512, help="square input side")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per model first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--num-classes", type=int, default=150)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    ours, hf = build_pair(args.variant, args.num_classes)
    x = torch.randn(1, 3, args.size, args.size)

    def run_ours() -> torch.Tensor:
        return ours(x)

    def run_hf() -> torch.Tensor:
        return hf(pixel_values=x).logits

    with torch.inference_mode():
        max_diff = (run_ours() - run_hf()).abs().max().item()
        for _ in range(args.warmup):
            run_ours()
            run_hf()
        times_ours, times_hf = [], []
        for _ in range(args.runs):
            times_ours.append(_timed(run_ours))
            times_hf.append(_timed(run_hf))

    med_ours, med_hf = statistics.median(times_ours), statistics.median(times_hf)
    ratio = med_ours / med_hf
    print(f"SegFormer-{args.variant.upper()} {args.size}x{args.size} batch 1, eval, inference_mode, "
          f"{args.threads} threads, {args.runs} interleaved runs after {args.warmup} warm-up")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"seglab       median {med_ours * 1000:8.1f} ms  (min {min(times_ours) * 1000:.1f})")
    print(f"transformers median {med_hf * 1000:8.1f} ms  (min {min(times_hf) * 1000:.1f})")
    print(f"ratio seglab/transformers {ratio:.3f}   max |logit diff| {max_diff:.2e}")
    return {"seglab_ms": med_ours * 1000, "hf_ms": med_hf * 1000, "ratio": ratio, "max_diff": max_diff}


if __name__ == "__main__":
    main()
