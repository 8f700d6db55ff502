"""seglab checkpoints: safetensors weights whose metadata names the model, and atomic writes.

A model checkpoint (`*.safetensors`) holds the model's state dict; its metadata records `seglab_model`,
`num_classes` and the constructor `overrides` (JSON), so `create_model(name, checkpoint=path)` rebuilds the
same network. Trainer state (optimizer, scheduler, RNG, iteration) lives beside it in a `.pt` file read with
`torch.load(weights_only=True)`. Every file is written to a temporary name and moved into place with
`os.replace`, so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Calls `write(tmp_path)` on a temporary file next to `path`, then renames it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
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
    num_classes = metadata.get("num_classes", "")
    extra = {k: v for k, v in metadata.items() if k not in {"format", "seglab_model", "num_classes", "overrides"}}
    return CheckpointMeta(
        model=metadata["seglab_model"],
        num_classes=int(num_classes) if num_classes else None,
        overrides=json.loads(metadata.get("overrides", "{}")),
        extra=extra,
    )


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Loads tensors from a safetensors file, or from a torch file with `weights_only=True` (no pickle code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read {path} with torch.load(weights_only=True): {exc}") from exc
    return obj


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


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Loads a seglab checkpoint into `model` strictly, with an error that lists what does not match."""
    state = load_state_dict(path)
    problems = describe_mismatch(model.state_dict(), state)
    if problems:
        raise ValueError("\n".join([f"checkpoint {path} does not fit the model:", *problems]))
    model.load_state_dict(state, strict=True)
