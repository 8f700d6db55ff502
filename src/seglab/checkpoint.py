"""seglab checkpoint files (ground floor: imports nothing of seglab): safetensors weights whose metadata names the
model, atomic writes, and reading foreign torch files without running pickled code.

A model checkpoint (`*.safetensors`) holds the model's state dict; its metadata records `seglab_model`,
`num_classes` and the constructor `overrides` (JSON), so `create_model(name, checkpoint=path)` rebuilds the
same network. Trainer state (optimizer, scheduler, RNG, iteration) lives beside it in a `.pt` file read with
`torch.load(weights_only=True)`. Every file is written to a temporary name and moved into place with
`os.replace`, so a crash never leaves a half-written checkpoint behind.

A plain state dict of a seglab model (seglab's own key names, no metadata: a `.safetensors` without seglab metadata,
or a `.pth` / `.pt` / `.bin` / `.ckpt` read with `torch.load(weights_only=True)`, `state_dict` / `model` wrappers
unwrapped) loads too: `create_model` builds the model with its default options and, unless the caller gives
`num_classes`, the class count read from the file (`seglab.registry.infer_num_classes`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn


@dataclass


class CheckpointMeta:
    """What a seglab checkpoint says about the model it holds."""

    model: str
    num_classes: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Calls `write(tmp_path)` on a temporary file next to `path`, then renames it over `path`.

    The file gets the mode a plain `open(path, "w")` would give (0666 less the umask: 0644 under the usual 022),
    not the temporary file's private 0600, so others on a shared machine can read results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_weights(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    model_name: str,
    num_classes: int | None,
    overrides: dict[str, Any] | None = None,
    extra: dict[str, str] | None = None,
) -> None:
    """Writes a state dict as a seglab safetensors checkpoint, atomically."""
    metadata = {
        "format": "seglab",
        "seglab_model": model_name,
        "num_classes": "" if num_classes is None else str(num_classes),
        "overrides": json.dumps(overrides or {}, sort_keys=True),
        **(extra or {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_model(path: str | Path, model: nn.Module, extra: dict[str, str] | None = None) -> None:
    """Saves a model built by `create_model` (it knows its name and overrides)."""
    save_weights(
        path, model.state_dict(), model.model_name, getattr(model, "num_classes", None),
        getattr(model, "model_overrides", {}), extra,
    )


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """Reads the metadata of a seglab safetensors checkpoint without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a safetensors file ({exc}); convert foreign checkpoints with "
                         f"`seglab convert`") from exc
    if "seglab_model" not in metadata:
        raise ValueError(f"{path} has no seglab metadata (key 'seglab_model'); convert it with `seglab convert`")
    return _meta_from(metadata)


def checkpoint_meta(path: str | Path) -> CheckpointMeta | None:
    """The seglab metadata of `path`, or None for a plain state dict: a `.safetensors` file without seglab metadata,
    or any other file (read later with `torch.load(weights_only=True)`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a safetensors file ({exc})") from exc
    return _meta_from(metadata) if "seglab_model" in metadata else None


def _meta_from(metadata: dict[str, str]) -> CheckpointMeta:
    num_classes = metadata.get("num_classes", "")
    extra = {k: v for k, v in metadata.items() if k not in {"format", "seglab_model", "num_classes", "overrides"}}
    return CheckpointMeta(
        model=metadata["seglab_model"],
        num_classes=int(num_classes) if num_classes else None,
        overrides=json.loads(metadata.get("overrides", "{}")),
        extra=extra,
    )


def numpy_safe_globals() -> list:
    """numpy's scalar and dtype constructors: training checkpoints keep numpy scalars in their metadata (mmengine's
    `hook_msgs`, best scores); allowing these to `torch.load(weights_only=True)` builds data, never runs code."""
    core = getattr(np, "_core", None) or np.core
    found = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
    found += [type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "uint8", "bool")]
    return found


def torch_load_weights(path: str | Path):
    """`torch.load(path, weights_only=True)`, with numpy scalars and arrays allowed (see `numpy_safe_globals`)."""
    with torch.serialization.safe_globals(numpy_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_state_dict(obj: Any, origin: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: unwraps `state_dict` / `model` wrappers and a DataParallel prefix."""
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{origin}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{origin}: entries that are not tensors: {', '.join(map(repr, not_tensors[:10]))}; "
                         f"pass the model's state dict")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Loads tensors from a safetensors file, or from a torch file with `weights_only=True` (no pickle code); a torch
    file's `state_dict` / `model` wrapper and DataParallel `module.` prefix are removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch_load_weights(path)
    except Exception as exc:
        raise ValueError(f"cannot read {path} with torch.load(weights_only=True): {exc}") from exc
    return unwrap_state_dict(obj, str(path))


def describe_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """Lines naming the keys missing from `state`, unexpected in it, and of another shape; empty if it fits."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    lines = []
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:8])}")
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:10])}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}")
    return lines


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Loads pretrained weights into `model.backbone` strictly.

    Args:
        model: a model with a `backbone` attribute (every `EncoderDecoder`).
        path: a seglab file whose keys are `backbone.*` (what `seglab convert` writes for an ImageNet encoder such
            as `mit_b0.pth`; a whole-model checkpoint works too, its other keys are ignored), or a state dict of
            the backbone alone (keys without the prefix). Every backbone tensor must be present with its shape.
    """
    state = load_state_dict(path)
    prefixed = any(k.startswith("backbone.") for k in state)
    if prefixed:
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    problems = describe_mismatch(model.backbone.state_dict(), state)
    if problems:
        name = getattr(model, "model_name", type(model).__name__)
        lines = [f"pretrained backbone weights {path} do not fit the {type(model.backbone).__name__} of {name} "
                 f"(another variant?):", *problems]
        if not prefixed:
            lines.append(f"  a foreign checkpoint must be converted first: seglab convert --source official|mmseg|hf "
                         f"--model {name} {path} DST.safetensors")
        raise ValueError("\n".join(lines))
    model.backbone.load_state_dict(state, strict=True)
