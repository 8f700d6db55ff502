"""Effect of SegNeXt's NMF starting bases on mIoU: fixed (seglab's default) against the original's random draw.

The official head draws new random NMF bases at every forward, evaluation included, so its mIoU depends on the
random state. seglab evaluates from fixed bases by default (`ham_eval_bases="fixed"`, seeded by `ham_seed`).
This script evaluates one trained checkpoint on its config's validation split with:
  - fixed bases for several `ham_seed` values,
  - random bases (the original behaviour) after `torch.manual_seed(s)` for several `s`,
and prints each mIoU with the spread of both groups.

    python benchmarks/segnext_eval_bases.py configs/segnext/segnext_t_shapes.yaml \
        work_dirs/segnext_t_shapes/best.safetensors --seeds 5
"""

from __future__ import annotations

import argparse
import statistics

import torch

from seglab.config import load_config
from seglab.engine.run import build_model, build_split, evaluate, prepare_data


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per group")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    prepare_data(config)
    dataset = build_split(config, config.data.val_split)
    model = build_model(config, config.model.num_classes, checkpoint=args.checkpoint).eval()
    nmf = model.decode_head.hamburger.ham
    fixed_bases = nmf.fixed_bases.clone()

    results: dict[str, list[float]] = {"fixed": [], "random": []}
    for seed in range(args.seeds):
        generator = torch.Generator().manual_seed(seed)
        nmf.fixed_bases = torch.nn.functional.normalize(torch.rand(fixed_bases.shape, generator=generator), dim=1)
        nmf.eval_bases = "fixed"
        miou = evaluate(model, dataset, config, config.model.num_classes)["mIoU"]
        results["fixed"].append(miou)
        print(f"fixed bases,  ham_seed {seed}: mIoU {miou:.4f}")
    for seed in range(args.seeds):
        nmf.eval_bases = "random"
        torch.manual_seed(seed)
        miou = evaluate(model, dataset, config, config.model.num_classes)["mIoU"]
        results["random"].append(miou)
        print(f"random bases, torch seed {seed}: mIoU {miou:.4f}")
    for group, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{group:6s}: mean {statistics.mean(values):.4f}  std {spread:.4f}  "
              f"range {min(values):.4f}-{max(values):.4f}  (n={len(values)})")
    return results


if __name__ == "__main__":
    main()
