"""Shared machinery of the checkpoint converters.

A converter reads a foreign state dict through a `SourceKeys` tracker, renames keys with an ordered regex table
(`RenameRule`), applies named tensor surgeries (`split_rows`, `linear_to_conv1x1`, `permute_concat_blocks`) and
hands the result to `finalize`, which fails loudly when a source key was neither used nor listed as dropped, or
when the result does not match the target model (or, for a backbone-only source, its backbone) key for key and
shape.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.checkpoint import torch_load_weights, unwrap_state_dict

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclass
class ConversionResult:
    """A converted checkpoint, ready for `create_model(name, num_classes=num_classes, **overrides)`.

    Args:
        state_dict: tensors under seglab's key names; loads with `strict=True` into the model, or, when
            `backbone_only`, holds only `backbone.*` keys and loads strictly into `model.backbone` once the
            prefix is removed.
        overrides: constructor options the source's numerics need (eps values, head variant, head width).
        num_classes: classes of the checkpoint's classifier; None for a backbone-only source.
        dropped: source keys deliberately left out (unused by the source model itself, or the ImageNet
            classifier of a backbone-only source).
        backbone_only: the source had no decode head (ImageNet-pretrained encoder weights, for `model.pretrained`).
    """

    state_dict: dict[str, torch.Tensor]
    overrides: dict[str, Any]
    num_classes: int | None
    dropped: list[str] = field(default_factory=list)
    backbone_only: bool = False


@dataclass(frozen=True)
class RenameRule:
    """One row of a rename table: a source key pattern (full match) and its seglab key.

    Args:
        pattern: regular expression matched against the whole source key.
        target: `re.Match.expand` template (`\\1`, `\\g<name>`) or a function of the match.
        transform: optional tensor surgery applied to the value (e.g. `linear_to_conv1x1`).
    """

    pattern: str
    target: str | Callable[[re.Match[str]], str]
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def apply(self, key: str) -> str | None:
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return None
        return match.expand(self.target) if isinstance(self.target, str) else self.target(match)


def stage_from_one_based(number: str) -> int:
    """`'1'..'4'` in names such as `patch_embed1` -> stage index 0..3."""
    return int(number) - 1


class SourceKeys:
    """A foreign state dict that records which keys a converter used or dropped.

    Args:
        state_dict: the source tensors.
        origin: a name for error messages (file path or "state dict").
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor], origin: str = "state dict") -> None:
        self.tensors = dict(state_dict)
        self.origin = origin
        self.consumed: set[str] = set()
        self.dropped: list[str] = []

    def keys(self) -> list[str]:
        """Source keys not yet used or dropped, in source order."""
        return [k for k in self.tensors if k not in self.consumed]

    def take(self, key: str) -> torch.Tensor:
        """Returns the tensor under `key` and marks it used."""
        if key not in self.tensors:
            raise ValueError(f"{self.origin}: expected key {key!r} is missing")
        if key in self.consumed:
            raise ValueError(f"{self.origin}: key {key!r} was used twice (converter bug)")
        self.consumed.add(key)
        return self.tensors[key]

    def drop(self, pattern: str) -> list[str]:
        """Marks every remaining key that fully matches `pattern` as deliberately dropped."""
        hits = [k for k in self.keys() if re.fullmatch(pattern, k)]
        self.consumed.update(hits)
        self.dropped.extend(hits)
        return hits

    def check_consumed(self, context: str) -> None:
        """Raises `ValueError` naming every key that was neither used nor dropped."""
        unused = self.keys()
        if unused:
            raise ValueError(
                f"{self.origin}: {len(unused)} source key(s) not understood by the converter for {context}: "
                f"{', '.join(unused[:20])}{' ...' if len(unused) > 20 else ''}. Is the source layout right?"
            )


class TargetDict:
    """The seglab state dict under construction; remembers which source key produced each entry."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.origin: dict[str, str] = {}

    def put(self, key: str, value: torch.Tensor, source_key: str) -> None:
        if key in self.tensors:
            raise ValueError(
                f"source keys {self.origin[key]!r} and {source_key!r} both map to {key!r}; the checkpoint mixes "
                f"two layouts or holds a duplicate"
            )
        self.tensors[key] = value
        self.origin[key] = source_key


def apply_rename_table(source: SourceKeys, target: TargetDict, table: Iterable[RenameRule]) -> None:
    """Moves every remaining source key matched by a rule (first match wins) into `target`."""
    rules = list(table)
    for key in source.keys():
        for rule in rules:
            new_key = rule.apply(key)
            if new_key is None:
                continue
            value = source.take(key)
            target.put(new_key, rule.transform(value) if rule.transform else value, key)
            break


def linear_to_conv1x1(weight: torch.Tensor) -> torch.Tensor:
    """A Linear weight (out, in) as a 1x1 conv weight (out, in, 1, 1)."""
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D linear weight, got shape {tuple(weight.shape)}")
    return weight[:, :, None, None]  # (out, in) -> (out, in, 1, 1)


def conv1x1_to_linear(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv weight (out, in, 1, 1) as a Linear weight (out, in)."""
    if weight.ndim != 4 or weight.shape[2:] != (1, 1):
        raise ValueError(f"expected a 1x1 conv weight (out, in, 1, 1), got shape {tuple(weight.shape)}")
    return weight[:, :, 0, 0]  # (out, in, 1, 1) -> (out, in)


def split_rows(tensor: torch.Tensor, sizes: list[int], key: str) -> list[torch.Tensor]:
    """Splits dim 0 into `sizes` (e.g. a fused `[q; k; v]` projection), checking the total."""
    if tensor.shape[0] != sum(sizes):
        raise ValueError(f"{key}: dim 0 is {tensor.shape[0]}, expected {sum(sizes)} to split into {sizes}")
    return list(torch.split(tensor, sizes, dim=0))


def permute_concat_blocks(weight: torch.Tensor, order: list[int], dim: int = 1) -> torch.Tensor:
    """Reorders equal channel blocks along `dim`: output block `i` is input block `order[i]`.

    Used when a conv consumes a concatenation that the source builds in another order than seglab.
    """
    if sorted(order) != list(range(len(order))):
        raise ValueError(f"order {order} is not a permutation of 0..{len(order) - 1}")
    if weight.shape[dim] % len(order):
        raise ValueError(f"dim {dim} of shape {tuple(weight.shape)} does not split into {len(order)} equal blocks")
    blocks = weight.chunk(len(order), dim=dim)
    return torch.cat([blocks[i] for i in order], dim=dim)


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    """The arrays of a `.npz` file (a JAX / AugReg ViT checkpoint: flat names such as `embedding/kernel`) as tensors
    under the same names, read with `numpy.load(allow_pickle=False)`.

    Raises:
        ValueError: naming the file when it is not an `.npz` archive of numeric arrays.
    """
    expected = "expected an .npz archive of numeric arrays, such as a JAX / AugReg ViT checkpoint"
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array (.npy), not named arrays")
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as exc:  # pickled or object arrays, a single .npy array
        raise ValueError(f"cannot read {path} with numpy.load(allow_pickle=False): {exc}; {expected}") from exc
    except (OSError, EOFError) as exc:  # not a zip archive, truncated
        raise ValueError(f"cannot read {path}: {exc}; {expected}") from exc
    if not arrays:
        raise ValueError(f"{path} holds no arrays; {expected}")
    tensors = {}
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{path}: array {name!r} has dtype {array.dtype}; {expected}")
        tensors[name] = torch.from_numpy(np.ascontiguousarray(array))
    return tensors


# what a detectron2 `.pkl` checkpoint (a pickled dict of numpy arrays) may name; anything else is refused
_PKL_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "ndarray"),
    ("numpy", "dtype"), ("collections", "OrderedDict"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dicts, lists and strings, and nothing else: no pickled code runs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PKL_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")
        return super().find_class(module, name)


def read_pkl(path: Path) -> dict[str, torch.Tensor]:
    """The arrays of a detectron2 `.pkl` checkpoint (`{"model": {name: ndarray}, ...}`, MaskFormer's official
    `model_final_*.pkl`) as tensors, read by an unpickler that only builds numpy arrays."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as a detectron2 checkpoint of numpy arrays: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of arrays (detectron2 `model`), got {type(obj).__name__}")
    tensors = {}
    for key, value in obj.items():
        if not isinstance(value, np.ndarray) or value.dtype == object:
            raise ValueError(f"{path}: entry {key!r} is not a numeric array")
        tensors[str(key)] = torch.from_numpy(np.ascontiguousarray(value))
    return tensors


def read_source(src: str | Path | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Loads `src` (a path or an already loaded checkpoint) into a flat state dict; also returns its name.

    Files are read with safetensors, `torch.load(weights_only=True)` or, for `.npz` (JAX) files,
    `numpy.load(allow_pickle=False)` (`read_npz`: tensors under the array names); no pickled code ever runs.
    """
    if isinstance(src, Mapping):
        return unwrap_state_dict(src, "state dict"), "state dict"
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return unwrap_state_dict(load_file(str(path)), str(path)), str(path)
    if path.suffix == ".npz":
        return read_npz(path), str(path)
    if path.suffix == ".pkl":
        return read_pkl(path), str(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise ValueError(f"{path}: unknown checkpoint suffix {path.suffix!r}; expected .safetensors, .npz or one of "
                         f"{', '.join(TORCH_SUFFIXES)}")
    try:
        obj = torch_load_weights(path)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"cannot read {path} with torch.load(weights_only=True): {exc}; re-save its state dict "
                         f"alone (torch.save(ckpt['state_dict'], ...)) or as safetensors") from exc
    return unwrap_state_dict(obj, str(path)), str(path)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def has_decode_head(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a segmentation checkpoint holds decode-head keys; without them it is a backbone-only source."""
    return any(key.startswith("decode_head.") for key in state_dict)


def expected_state(
    model_name: str, num_classes: int | None, overrides: dict[str, Any], backbone_only: bool = False
) -> dict[str, torch.Tensor]:
    """Keys and shapes a conversion must produce: the state dict of `create_model(model_name, ...)` built on the
    meta device (no memory is spent), or only its backbone's, under the `backbone.` prefix."""
    from seglab.registry import create_model

    with torch.device("meta"):
        model = create_model(model_name, num_classes=num_classes, **overrides)
    if backbone_only:
        return {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    return model.state_dict()


def finalize(
    source: SourceKeys,
    target: TargetDict,
    model_name: str,
    num_classes: int | None,
    overrides: dict[str, Any],
    backbone_only: bool = False,
) -> ConversionResult:
    """Checks the conversion and packs it into a `ConversionResult`.

    Fails with `ValueError` when a source key was neither used nor dropped, or when the converted keys and shapes
    differ from those of `create_model(model_name, num_classes=num_classes, **overrides)` (of its backbone alone
    when `backbone_only`). BatchNorm `num_batches_tracked` counters absent from older checkpoints are filled with
    zeros; they play no part in inference.
    """
    source.check_consumed(model_name)
    expected = expected_state(model_name, num_classes, overrides, backbone_only)
    fits = f"the backbone of {model_name}" if backbone_only else model_name
    state = target.tensors
    for key, value in expected.items():
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=value.dtype)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (from {target.origin[k]!r}): checkpoint {_shape(state[k])}, {fits} expects {_shape(expected[k])}"
        for k in expected if k in state and _shape(state[k]) != _shape(expected[k])
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source.origin} does not fit {fits} (is it a checkpoint of another variant?):"]
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched[:8]))
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing[:10]))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): "
                         + ", ".join(f"{k} (from {target.origin[k]!r})" for k in unexpected[:10]))
        raise ValueError("\n".join(lines))
    ordered = {k: state[k].contiguous() for k in expected}
    return ConversionResult(state_dict=ordered, overrides=dict(overrides), num_classes=num_classes,
                            dropped=list(source.dropped), backbone_only=backbone_only)


def model_variant(model_name: str, prefix: str, variants: Iterable[str], family: str, source: str) -> str:
    """`prefix + variant` -> `variant`; any other model name is refused with the list of supported ones.

    Args:
        model_name: the seglab model the weights are for (e.g. `segnext_b`).
        prefix: the family's name prefix (`segnext_`).
        variants: the family's variant names.
        family: the family's display name, for the message.
        source: the checkpoint layout's name, for the message.
    """
    variants = list(variants)
    variant = model_name.removeprefix(prefix)
    if not model_name.startswith(prefix) or variant not in variants:
        names = ", ".join(f"{prefix}{v}" for v in variants)
        raise ValueError(f"source {source!r} converts {family} checkpoints only; model must be one of {names}, "
                         f"got {model_name!r}")
    return variant
