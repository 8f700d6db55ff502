"""Run configs: YAML files (read with `yaml.safe_load`, never executed) parsed into dataclasses.

A config may name one `base:` file (relative to itself) whose values it overrides; the base may not have a
base of its own. `--set a.b=c` overrides are applied last, values parsed as YAML scalars. Any key that is not
a field of the matching dataclass is an error that lists the valid keys, and every value is checked against its
field's type, choices and range (`_CHOICES`, `_RANGES`) before anything is built or written.
"""

from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A run config that cannot be used as written."""


@dataclass
class ModelConfig:
    name: str = "segformer_b0"
    num_classes: int | None = None  # default: the dataset's class count
    checkpoint: str | None = None  # seglab safetensors file of the whole model to start from
    # backbone weights: a tag of `seglab weights NAME` (`imagenet`, `imagenet22k`: downloaded and converted on first
    # use) or a file (e.g. an ImageNet MiT converted with `seglab convert`)
    pretrained: str | None = None
    # whole-model published weights by tag (`ade20k-512`); another num_classes refits the classifier
    init: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # constructor options (see `seglab info NAME`)


@dataclass
class TrainTransformConfig:
    crop_size: tuple[int, int] = (512, 512)
    scale: tuple[int, int] = (2048, 512)  # (long, short) base scale before the random ratio
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True


@dataclass
class TestTransformConfig:
    scale: tuple[int, int] | None = None  # (long, short) keep-ratio resize; None keeps the image size
    size_divisor: int | None = None  # SegFormer's aligned resize rounds to a multiple of this


@dataclass
class DataConfig:
    dataset: str = "folder"  # seglab.data.datasets.list_datasets(): folder, shapes, ade20k, cityscapes, ...
    root: str = "data/shapes"
    train_split: str = "train"
    val_split: str = "val"
    reduce_zero_label: bool = False
    ignore_index: int = 255
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    batch_size: int = 2
    val_batch_size: int = 1
    num_workers: int = 0
    train_transform: TrainTransformConfig = field(default_factory=TrainTransformConfig)
    test_transform: TestTransformConfig = field(default_factory=TestTransformConfig)
    # generated datasets only ("shapes"): written to `root` when it does not exist yet
    generate: dict[str, Any] = field(default_factory=dict)
    # further `build_dataset` keyword arguments (FolderPairs options, e.g. {reduce_zero_label: false})
    options: dict[str, Any] = field(default_factory=dict)
    # a training sample that cannot be read: "error" stops with the file and the problem, "skip" replaces it with
    # the next sample and logs it (count and message in log.jsonl)
    on_bad_sample: str = "error"


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 6e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    # mmcv paramwise custom_keys: the longest matching substring of a parameter name wins
    paramwise: dict[str, dict[str, float]] = field(default_factory=dict)
    grad_clip: float | None = None  # max global L2 norm
    accumulate: int = 1  # micro-batches per optimizer step (loss scaled 1/accumulate); an iteration is one step
    # total batch (processes x batch_size x accumulate) that `lr` was tuned for; when set, lr is scaled linearly
    # to this run's total batch (seglab.engine.trainer.scale_lr)
    reference_batch: int | None = None


@dataclass
class ScheduleConfig:
    iters: int = 160000
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0
    # "step" (instance configs only, seglab.engine.instance): lr x gamma at each iteration in `steps`, no poly decay
    policy: str = "poly"  # poly | step
    steps: tuple[int, ...] = ()
    gamma: float = 0.1


@dataclass
class LossConfig:
    class_weights: list[float] | None = None
    aux_weights: list[float] = field(default_factory=list)


@dataclass
class EvalConfig:
    interval: int = 16000
    mode: str = "whole"  # whole | slide
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)


@dataclass
class TrainConfig:
    seed: int = 0
    amp: str = "none"  # none | bf16 | fp16
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    log_interval: int = 50
    checkpoint_interval: int = 16000
    keep_checkpoints: int = 2
    work_dir: str = "work_dirs/run"
    sync_bn: bool = False  # SyncBatchNorm across processes (torchrun on CUDA); BatchNorm otherwise
    norm_eval: bool = False  # keep BatchNorm layers in eval mode while training (frozen statistics)
    compile: bool = False  # torch.compile the training forward
    channels_last: bool = False  # channels-last memory format for the model and the input batches
    ema: float | None = None  # decay of an exponential moving average of the weights (evaluated, ema.safetensors)
    max_bad_losses: int = 0  # NaN/inf steps to skip before stopping (0: stop at the first)
    init_from: str | None = None  # fine-tune: load the tensors of this checkpoint that fit (seglab train --init-from)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# string fields with a fixed set of values
_CHOICES: dict[str, tuple[str, ...]] = {
    "optim.name": ("adamw", "sgd"),
    "schedule.policy": ("poly", "step"),
    "eval.mode": ("whole", "slide"),
    "train.amp": ("none", "bf16", "fp16"),
    "data.on_bad_sample": ("error", "skip"),
}

# numeric ranges (lowest, highest, what to call it); for tuples and lists every element is checked
_POSITIVE = (1, None, "an integer >= 1")
_NON_NEGATIVE = (0, None, ">= 0")
_FRACTION = (0, 1, "between 0 and 1")
_RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "model.num_classes": _POSITIVE,
    "data.batch_size": _POSITIVE,
    "data.val_batch_size": _POSITIVE,
    "data.num_workers": _NON_NEGATIVE,
    "data.ignore_index": _NON_NEGATIVE,
    "data.std": (1e-12, None, "> 0"),
    "data.train_transform.crop_size": _POSITIVE,
    "data.train_transform.scale": _POSITIVE,
    "data.train_transform.ratio_range": (1e-12, None, "> 0"),
    "data.train_transform.cat_max_ratio": _FRACTION,
    "data.train_transform.flip_prob": _FRACTION,
    "data.test_transform.scale": _POSITIVE,
    "data.test_transform.size_divisor": _POSITIVE,
    "optim.lr": _NON_NEGATIVE,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.betas": (0, 1, "in [0, 1)"),
    "optim.momentum": _FRACTION,
    "optim.grad_clip": (1e-12, None, "> 0"),
    "optim.accumulate": _POSITIVE,
    "optim.reference_batch": _POSITIVE,
    "schedule.iters": _POSITIVE,
    "schedule.warmup_iters": _NON_NEGATIVE,
    "schedule.warmup_ratio": _FRACTION,
    "schedule.power": _NON_NEGATIVE,
    "schedule.min_lr": _NON_NEGATIVE,
    "schedule.steps": _POSITIVE,
    "schedule.gamma": (1e-12, None, "> 0"),
    "loss.class_weights": _NON_NEGATIVE,
    "loss.aux_weights": _NON_NEGATIVE,
    "eval.interval": _POSITIVE,
    "eval.crop_size": _POSITIVE,
    "eval.stride": _POSITIVE,
    "eval.scales": (1e-12, None, "> 0"),
    "train.seed": _NON_NEGATIVE,
    "train.threads": _POSITIVE,
    "train.log_interval": _POSITIVE,
    "train.checkpoint_interval": _POSITIVE,
    "train.keep_checkpoints": _NON_NEGATIVE,
    "train.ema": (0, 1, "in [0, 1)"),
    "train.max_bad_losses": _NON_NEGATIVE,
}


def _type_name(hint: Any) -> str:
    """`int | None` -> "an integer or null", `tuple[int, int]` -> "a list of 2 integers"."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0]).split(' ', 1)[1]}s"
        return f"a list of {len(args)} {_type_name(args[0]).split(' ', 1)[1]}s"
    if origin is list:
        return f"a list of {_type_name(args[0]).split(' ', 1)[1]}s"
    if origin is dict or hint is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true/false)"}.get(
        hint, getattr(hint, "__name__", str(hint)))


class _Mismatch(Exception):
    pass


def _convert(value: Any, hint: Any) -> Any:
    """`value` as type `hint` (lists become tuples where the field is a tuple), or _Mismatch."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is tuple or origin is list:
        if not isinstance(value, list | tuple):
            raise _Mismatch
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis) and len(value) != len(args):
            raise _Mismatch
        items = [_convert(v, args[0]) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _Mismatch
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise _Mismatch from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _Mismatch
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _Mismatch
        return value
    raise TypeError(f"config field type {hint} is not supported")


def _check_value(key: str, value: Any, hint: Any) -> Any:
    try:
        value = _convert(value, hint)
    except _Mismatch:
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}") from None
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"{key}: expected one of {', '.join(_CHOICES[key])}, got {value!r}")
    if key in _RANGES and value is not None:
        low, high, words = _RANGES[key]
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if (low is not None and item < low) or (high is not None and item > high):
                raise ConfigError(f"{key}: expected {words}, got {value!r}")
    return value


def _build(cls: type, values: Any, where: str):
    """Builds dataclass `cls` from a mapping, recursing into nested dataclasses and checking keys and values."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{where}.{k}'.lstrip('.') for k in unknown)}; "
                          f"valid keys{' of ' + where if where else ''}: {', '.join(names)}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        key = f"{where}.{name}".lstrip(".")
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _check_value(key, value, hint)
    return cls(**kwargs)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def parse_set(assignments: list[str]) -> dict:
    """`["optim.lr=1e-4", "train.amp=bf16"]` -> nested dict with YAML-parsed values."""
    out: dict = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set expects key.path=value, got {item!r}")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Reads a run config (with its optional `base:`) and applies `--set` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = _read_yaml(path)
        base = data.pop("base", None)
        if base is not None:
            base_data = _read_yaml(path.parent / base)
            if "base" in base_data:
                raise ConfigError(f"{path.parent / base}: a base config may not have a base of its own")
            data = _deep_merge(base_data, data)
    data = _deep_merge(data, parse_set(overrides or []))
    return _build(RunConfig, data, "")


def config_to_dict(config: RunConfig) -> dict:
    """Plain-YAML-serialisable dict (tuples become lists)."""

    def plain(value):
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def flatten_config(config: RunConfig) -> dict[str, Any]:
    """Dotted keys to values, descending into mappings (`model.overrides.drop_path_rate`)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            out[prefix] = value

    walk("", config_to_dict(config))
    return out


def config_differences(saved: RunConfig, given: RunConfig,
                       ignore: tuple[str, ...] = ("train.work_dir",)) -> list[tuple[str, Any, Any]]:
    """(key, saved value, given value) for every key whose value differs; a key missing on one side is None."""
    a, b = flatten_config(saved), flatten_config(given)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        old, new = a.get(key, missing), b.get(key, missing)
        if old != new:
            out.append((key, None if old is missing else old, None if new is missing else new))
    return out


def format_differences(differences: list[tuple[str, Any, Any]]) -> str:
    """`schedule.iters 200 -> 6000; optim.lr 0.001 -> 0.002` (values as YAML would write them)."""

    def show(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()

    return "; ".join(f"{key} {show(old)} -> {show(new)}" for key, old, new in differences)


def test_pipeline(config: RunConfig) -> dict[str, Any]:
    """How a model trained with `config` is fed at test time, in the weights table's terms: `mean`, `std` and
    `test` (`scale`, `size_divisor`, `mode`, and `crop` / `stride` for slide inference)."""
    t, ev = config.data.test_transform, config.eval
    test: dict[str, Any] = {"mode": ev.mode}
    if t.scale:
        test["scale"] = list(t.scale)
    if t.size_divisor:
        test["size_divisor"] = t.size_divisor
    if ev.mode == "slide":
        test.update(crop=list(ev.crop_size) if ev.crop_size else None, stride=list(ev.stride) if ev.stride else None)
    return {"mean": list(config.data.mean), "std": list(config.data.std), "test": test}
