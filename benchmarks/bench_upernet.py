"""seglab UperNet-Swin vs Hugging Face transformers UperNet-Swin on CPU, same weights, one process.

The transformers model is built with random weights, converted with `seglab.convert` (source `hf`) and loaded
`strict=True` into the seglab model (both with their auxiliary head, which neither runs at inference). transformers
returns logits upsampled to the input size, so the seglab timing includes the same bilinear upsampling. Runs are
interleaved (seglab, transformers, ...); medians are reported.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_upernet.py --variant t --size 512 --runs 10 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from seglab import create_model
from seglab.backbones.swin import SWIN_CONFIGS
from seglab.convert import convert_checkpoint


def build_pair(variant: str, num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(seglab model, transformers model) of UperNet-Swin-`variant` sharing random weights, in eval mode."""
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    swin = SWIN_CONFIGS[variant]
    backbone = SwinConfig(embed_dim=swin.embed_dim, depths=list(swin.depths), num_heads=list(swin.num_heads),
                          window_size=swin.window_size, out_features=["stage1", "stage2", "stage3", "stage4"])
    torch.manual_seed(0)
    hf = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, num_labels=num_classes)).eval()
    result = convert_checkpoint(hf.state_dict(), "hf", f"upernet_swin_{variant}")
    ours = create_model(f"upernet_swin_{variant}", num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)
    return ours, hf


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="t", choices=sorted(SWIN_CONFIGS))
    parser.add_argument("--size", type=int, default=512, help="square input side")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per model first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--num-classes", type=int, default=150)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    ours, hf = build_pair(args.variant, args.num_classes)
    x = torch.randn(1, 3, args.size, args.size)

    def run_ours() -> torch.Tensor:
        return F.interpolate(ours(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def run_hf() -> torch.Tensor:
        return hf(pixel_values=x).logits

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    with torch.inference_mode():
        max_diff = (run_ours() - run_hf()).abs().max().item()
        for _ in range(args.warmup):
            run_ours()
            run_hf()
        times_ours, times_hf = [], []
        for _ in range(args.runs):
            times_ours.append(timed(run_ours))
            times_hf.append(timed(run_hf))

    med_ours, med_hf = statistics.median(times_ours), statistics.median(times_hf)
    print(f"UperNet-Swin-{args.variant.upper()} {args.size}x{args.size} batch 1, eval, inference_mode, "
          f"{args.threads} threads, {args.runs} interleaved runs after {args.warmup} warm-up")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"seglab       median {med_ours * 1000:8.1f} ms  (min {min(times_ours) * 1000:.1f})")
    print(f"transformers median {med_hf * 1000:8.1f} ms  (min {min(times_hf) * 1000:.1f})")
    print(f"ratio seglab/transformers {med_ours / med_hf:.3f}   max |logit diff| {max_diff:.2e}")
    return {"seglab_ms": med_ours * 1000, "hf_ms": med_hf * 1000, "ratio": med_ours / med_hf, "max_diff": max_diff}


if __name__ == "__main__":
    main()
