"""What the `seglab` commands share: device choice, run configs, input files, inference flags, printable results.

Torch-free at import (torch and the rest of seglab are imported inside the functions): `seglab --help` and
`seglab models` import this module without loading torch. The instance-or-semantic checks here read only the config
and the checkpoint's metadata, so a semantic command never imports `seglab.instance` or `seglab.engine.instance`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# the same names as `seglab.engine.instance.INSTANCE_DATASETS` (tests/unit/test_layers_imports.py checks it), kept
# here so that deciding the kind of run imports no instance code
INSTANCE_DATASETS = ("coco_instances", "shapes_instances")


def choose_device(name: str | None) -> torch.device:
    """`name` (cpu, cuda, cuda:1, ...), or cuda if available, else cpu."""
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def one_line(message: str) -> str:
    """A multi-line message (e.g. a list of mismatching tensors) as one line: its lines joined by "; "."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(f"{line};" if i < len(lines) - 1 and not line.endswith(":") else line
                    for i, line in enumerate(lines))


# ---------------------------------------------------------------------------------------------------- arguments
CHECKPOINT_HELP = "seglab safetensors checkpoint, or a plain state dict of the model (.safetensors, .pth, .pt)"
NUM_CLASSES_HELP = "default: the checkpoint's (read from a plain state dict's classifier)"


def add_config_args(p, required: bool = True) -> None:
    """The positional run config and `--set KEY=VALUE`."""
    if required:
        p.add_argument("config", help="YAML run config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")


def load_run_config(args):
    """`args.config` with `--set` (or, for `train --resume --work-dir DIR` without a config, DIR/config.yaml), with
    `--work-dir` and `train.threads` applied."""
    import torch

    from seglab.config import ConfigError, load_config

    if args.config is None:
        if not getattr(args, "resume", False) or not getattr(args, "work_dir", None):
            raise ConfigError("a run config is needed (seglab train CONFIG); only --resume --work-dir DIR can do "
                              "without one (it continues the run saved in DIR)")
        config = load_config(Path(args.work_dir) / "config.yaml", args.set)
    else:
        config = load_config(args.config, args.set)
    if getattr(args, "work_dir", None):
        config.train.work_dir = args.work_dir
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    return config


# ---------------------------------------------------------------------------------------------------- run kind
def is_instance_config(config) -> bool:
    """Whether `config` describes an instance segmentation run (its `data.dataset` is an instance dataset)."""
    return config.data.dataset in INSTANCE_DATASETS


def is_instance_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a seglab checkpoint of an instance model (its task in the model catalogue; False for other or
    unreadable files)."""
    from seglab.catalog import load_catalog
    from seglab.checkpoint import read_checkpoint_meta

    try:
        model = read_checkpoint_meta(path).model
    except (ValueError, FileNotFoundError):
        return False
    return any(row["name"] == model and row["task"] == "instance" for row in load_catalog())


# ---------------------------------------------------------------------------------------------------- results
def class_info(dataset, num_classes: int) -> tuple[list[str], list]:
    """(class names, palette) of `dataset`, numbered classes and the default palette where it has none."""
    from seglab.palette import make_palette

    classes = list(getattr(dataset, "classes", None) or [str(i) for i in range(num_classes)])
    palette = getattr(dataset, "palette", None)
    return classes, make_palette(num_classes, palette=palette)


def jsonable(metrics: dict) -> dict:
    """`metrics` with tensors as lists and NaN as None, for `json.dumps`."""
    import torch

    def plain(v):
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, float) and v != v:
            return None
        return v

    return {k: plain(v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------------- inputs
def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """(image files, other files found in the given folders); a missing input is an error."""
    files, others = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file()):
                (files if found.suffix.lower() in IMAGE_SUFFIXES else others).append(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(inputs)}")
    return files, others


def skipped_summary(others: list[Path], unreadable: list[tuple[Path, str]]) -> str | None:
    """One line: how many files were skipped and why."""
    parts = []
    if others:
        suffixes = sorted({p.suffix.lower() or "(no suffix)" for p in others})
        parts.append(f"{len(others)} not an image ({', '.join(suffixes[:6])}{', ...' if len(suffixes) > 6 else ''})")
    if unreadable:
        shown = "; ".join(f"{path}: {why}" for path, why in unreadable[:3])
        parts.append(f"{len(unreadable)} unreadable ({shown}{'; ...' if len(unreadable) > 3 else ''})")
    return f"skipped {len(others) + len(unreadable)} file(s): {', '.join(parts)}" if parts else None


# ---------------------------------------------------------------------------------------------------- inference flags
def add_inference_flags(p) -> None:
    """`--mode/--crop-size/--stride/--flip/--scales` (predict and eval)."""
    p.add_argument("--mode", choices=("whole", "slide"), help="whole image, or sliding windows (default eval.mode)")
    p.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), help="sliding window (eval.crop_size)")
    p.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding window stride (eval.stride)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--scales", type=float, nargs="+", help="multi-scale: image scale factors (eval.scales)")


def apply_inference_flags(config, args) -> None:
    """`--mode/--crop-size/--stride/--flip/--scales` (predict and eval) into `config.eval`."""
    if args.mode:
        config.eval.mode = args.mode
    if args.crop_size:
        config.eval.crop_size = tuple(args.crop_size)
    if args.stride:
        config.eval.stride = tuple(args.stride)
    if args.flip:
        config.eval.flip = True
    if args.scales:
        config.eval.scales = tuple(args.scales)
