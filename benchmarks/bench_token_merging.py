"""SegFormer++ token merging (`token_merging` presets "hq", "fast", "n2d"): the speed-up and the accuracy change.

    # latency, the exact model against each preset, interleaved in one process (random weights, batch 1)
    python benchmarks/bench_token_merging.py speed --models segformer_b0 segformer_b2 --sizes 512x512 1024x2048

    # mIoU of a trained checkpoint with each preset: on the shapes validation images (128 px) and on mosaics of
    # them at Cityscapes resolution (8 x 16 tiles = 1024 x 2048, objects at the trained scale, the token counts of
    # a Cityscapes image), plus the share of pixels whose label the preset changes
    python benchmarks/bench_token_merging.py accuracy --config configs/segformer/segformer_b0_shapes.yaml \\
        --checkpoint work_dirs/demo/final.safetensors

Nothing else should run on the machine while it times.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

PRESETS = (None, "hq", "fast", "n2d")


def speed(args) -> None:
    import seglab

    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"median of {args.runs} interleaved runs, batch 1, random weights")
    print("| model | input | exact | " + " | ".join(f"{p} (speed-up, label agreement)" for p in PRESETS[1:]) + " |")
    print("|---|---|---|" + "---|" * (len(PRESETS) - 1))
    for name in args.models:
        torch.manual_seed(0)
        model = seglab.create_model(name, num_classes=19).eval()
        for size in args.sizes:
            height, width = (int(v) for v in size.split("x"))
            images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
            times: dict[str | None, list[float]] = {p: [] for p in PRESETS}
            labels = {}
            with torch.inference_mode():
                for preset in PRESETS:  # warm-up, and the labels each preset gives
                    model.backbone.set_token_merging(preset)
                    labels[preset] = model(images).argmax(1)
                for _ in range(args.runs):
                    for preset in PRESETS:
                        model.backbone.set_token_merging(preset)
                        start = time.perf_counter()
                        model(images)
                        times[preset].append(time.perf_counter() - start)
            exact = statistics.median(times[None])
            cells = [f"{exact * 1000:.0f} ms"]
            for preset in PRESETS[1:]:
                agree = (labels[preset] == labels[None]).float().mean().item()
                merged = statistics.median(times[preset])
                cells.append(f"{merged * 1000:.0f} ms ({exact / merged:.2f}x, {agree * 100:.1f} %)")
            print(f"| `{name}` | {height}x{width} | " + " | ".join(cells) + " |", flush=True)


class Mosaics(torch.utils.data.Dataset):
    """`count` images of `rows` x `cols` tiles of `dataset` (taken in order, wrapping around): large images whose
    objects keep the scale the model was trained at."""

    def __init__(self, dataset, rows: int, cols: int, count: int) -> None:
        self.dataset, self.rows, self.cols, self.count = dataset, rows, cols, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        tiles = self.rows * self.cols
        samples = [self.dataset[(index * tiles + k) % len(self.dataset)] for k in range(tiles)]
        image_rows = [torch.cat([s["image"] for s in samples[r * self.cols:(r + 1) * self.cols]], dim=-1)
                      for r in range(self.rows)]
        mask_rows = [torch.cat([s["mask"] for s in samples[r * self.cols:(r + 1) * self.cols]], dim=-1)
                     for r in range(self.rows)]
        return {"image": torch.cat(image_rows, dim=-2), "mask": torch.cat(mask_rows, dim=-2),
                "path": f"mosaic_{index}.png"}


def accuracy(args) -> None:
    from seglab.config import load_config
    from seglab.engine.run import build_model, build_split, evaluate, prepare_data

    torch.set_num_threads(args.threads)
    config = load_config(args.config, ["eval.mode=whole", "data.val_batch_size=1"])
    prepare_data(config)
    val_set = build_split(config, config.data.val_split)
    num_classes = config.model.num_classes or len(val_set.classes)
    model = build_model(config, num_classes, checkpoint=args.checkpoint).eval()
    sets = {f"shapes val ({len(val_set)} x {tuple(val_set[0]['image'].shape[-2:])})": val_set}
    mosaics = Mosaics(val_set, args.rows, args.cols, args.mosaics)
    sets[f"mosaics ({args.mosaics} x {tuple(mosaics[0]['image'].shape[-2:])})"] = mosaics
    print(f"{args.checkpoint}: {config.model.name}, whole-image inference, {args.threads} threads")
    print("| data | preset | mIoU | change | pixels relabelled | seconds per image |")
    print("|---|---|---|---|---|---|")
    for title, dataset in sets.items():
        reference_labels: list[torch.Tensor] = []
        exact_miou = None
        for preset in PRESETS:
            model.backbone.set_token_merging(preset)
            labels: list[torch.Tensor] = []
            start = time.perf_counter()
            metrics = evaluate(model, dataset, config, num_classes, on_batch=lambda _, p, out=labels: out.append(p))
            seconds = (time.perf_counter() - start) / len(dataset)
            if preset is None:
                reference_labels, exact_miou = labels, metrics["mIoU"]
            changed = sum(int((a != b).sum()) for a, b in zip(labels, reference_labels))
            total = sum(a.numel() for a in labels)
            change = "" if preset is None else f"{(metrics['mIoU'] - exact_miou) * 100:+.2f}"
            print(f"| {title} | {preset or 'exact'} | {metrics['mIoU'] * 100:.2f} | {change} | "
                  f"{changed / total * 100:.2f} % | {seconds:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--models", nargs="+", default=["segformer_b0", "segformer_b2"])
    p.add_argument("--sizes", nargs="+", default=["512x512", "1024x2048"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=speed)
    p = sub.add_parser("accuracy")
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--cols", type=int, default=16)
    p.add_argument("--mosaics", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=accuracy)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
