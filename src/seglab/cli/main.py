"""`seglab` command line: train, eval, predict, refine, models, weights, push, info, convert, export, data, analyze,
serve, demo.

One module per group of commands: `semantic` (train, eval, predict), `instance` (Mask R-CNN runs, refine),
`models` (models, weights, push, info, convert, export), `data`, `analyze` (erf, resolution, corruptions, errors),
`serve`; shared helpers in `common`. This module builds the parser and runs the command. Run configs whose
`data.dataset` is an instance dataset (`coco_instances`, `shapes_instances`), and Mask R-CNN checkpoints, train,
evaluate and predict with Mask R-CNN through `seglab.cli.instance`, which is imported only then; the others are
semantic segmentation runs.

Every command module is torch-free at import: `seglab --help` and `seglab models` never load torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from seglab.cli import analyze, data, models, semantic, serve
from seglab.cli.common import one_line
from seglab.cli.semantic import run_training

__all__ = ["build_parser", "main", "run_training"]  # run_training: the demo and tests train through it


def _later(module: str, name: str) -> Callable:
    """The command `module.name`, imported when it runs (`seglab refine` imports instance code, the demo trains)."""

    def run(args) -> int:
        return getattr(importlib.import_module(module), name)(args)

    return run


def _add_refine_parser(sub) -> None:
    p = sub.add_parser("refine", help="refine coarse instance masks with BPR; writes one PNG per instance")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--bpr", required=True, help="BPR checkpoint (save_bpr: bpr_hrnet18s / bpr_hrnet48)")
    p.add_argument("--detector", help="Mask R-CNN checkpoint whose masks are refined")
    p.add_argument("--masks", help="coarse masks instead: a .npz with 'masks' (N, H, W), or a folder of "
                                   "{stem}_masks.npz (what `seglab predict` writes for instance models)")
    p.add_argument("--out", required=True, help="output folder: {stem}/{k:03d}.png and {stem}_refined.npz")
    p.add_argument("--score-thresh", type=float, default=0.5, help="with --detector: detections kept")
    p.add_argument("--patch-size", type=int, default=64, help="boundary patch side in pixels (BPR: 64)")
    p.add_argument("--nms-iou", type=float, default=0.55, help="patch NMS IoU (BPR: 0.55 Cityscapes, 0.25 COCO)")
    p.add_argument("--device")
    p.set_defaults(func=_later("seglab.cli.instance", "cmd_refine"))


def _cmd_demo(args) -> int:
    from seglab.cli.demo import run_demo

    return run_demo(args.config, args.out, args.set)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seglab", description="Semantic segmentation in pure PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    semantic.add_parsers(sub)  # train, eval, predict
    _add_refine_parser(sub)  # here rather than in cli/instance.py: building the parser imports no instance code
    models.add_parsers(sub)  # models, weights, push, info, convert, export
    data.add_parsers(sub)
    analyze.add_parsers(sub)  # erf, resolution, corruptions, errors
    serve.add_parsers(sub)

    p = sub.add_parser("demo", help="generate shapes, train segformer_b0, evaluate, draw predictions")
    p.add_argument("--config", default="configs/segformer/segformer_b0_shapes.yaml")
    p.add_argument("--out", default="work_dirs/demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)  # before the imports below (torch): `--help` answers at once
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: reports record the command that made them

    from seglab.hub.download import WeightsDownloadError  # torch-free too
    from seglab.registry import CheckpointNote  # torch-free, as config.py: `seglab models` never loads torch

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # one line each, without the source line Python would echo; notes are what create_model inferred from a
        # checkpoint (e.g. the class count of a plain state dict)
        kind = "note" if issubclass(category, CheckpointNote) else "warning"
        print(f"seglab {args.command}: {kind}: {one_line(str(message))}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", CheckpointNote)
            warnings.showwarning = show_warning
            return args.func(args)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, WeightsDownloadError) as exc:  # ConfigError,
        # DatasetError, UnknownWeightsError too
        print(f"seglab {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
