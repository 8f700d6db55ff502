"""seglab checkpoints: safetensors weights whose metadata names the model, and atomic writes.

A model checkpoint (`*.safetensors`) holds the model's state dict; its metadata records `seglab_model`,
`num_classes` and the constructor `overrides` (JSON), so `create_model(name, checkpoint=path)` rebuilds the
same network. Trainer state (optimizer, scheduler, RNG, iteration) lives beside it in a `.pt` file read with
`torch.load(weights_only=True)`. Every file is written to a temporary name and moved into place with
`os.replace`, so a crash never leaves a half-written checkpoint behind.

A plain state dict of a seglab model (seglab's own key names, no metadata: a `.safetensors` without seglab metadata,
or a `.pth` / `.pt` / `.bin` / `.ckpt` read with `torch.load(weights_only=True)`, `state_dict` / `model` wrappers
unwrapped) loads too: `create_model` builds the model with its default options and, unless the caller gives
`num_classes`, the class count read from the file (`infer_num_classes`), reported with a `CheckpointNote`.
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

from seglab.registry import CheckpointNote  # noqa: F401  (defined there, torch-free, for the CLI)


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


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Loads tensors from a safetensors file, or from a torch file with `weights_only=True` (no pickle code); a torch
    file's `state_dict` / `model` wrapper and DataParallel `module.` prefix are removed."""
    from seglab.convert.common import unwrap_state_dict

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
    return unwrap_state_dict(obj, str(path))


def class_dependent_keys(model_name: str, overrides: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """The tensors of `create_model(model_name, **overrides)` whose shape follows `num_classes`, found by building the
    model on the meta device with 2 and with 3 classes: key -> (dim, per_class, offset), where
    `shape[dim] == per_class * num_classes + offset` (e.g. `decode_head.classifier.weight` -> (0, 1, 0), MaskFormer's
    `class_embed.weight` with its "no object" row -> (0, 1, 1))."""
    from seglab.registry import create_model

    options = {k: v for k, v in overrides.items() if k != "num_classes"}
    with torch.device("meta"):
        two = create_model(model_name, num_classes=2, **options).state_dict()
        three = create_model(model_name, num_classes=3, **options).state_dict()
    found = {}
    for key, a in two.items():
        b = three.get(key)
        if b is None or a.shape == b.shape or a.dim() != b.dim():
            continue
        dims = [d for d in range(a.dim()) if a.shape[d] != b.shape[d]]
        if len(dims) == 1:
            per_class = b.shape[dims[0]] - a.shape[dims[0]]
            found[key] = (dims[0], per_class, a.shape[dims[0]] - 2 * per_class)
    return found


def infer_num_classes(
    model_name: str, state: dict[str, torch.Tensor], overrides: dict[str, Any], origin: str = "state dict"
) -> tuple[int, str] | None:
    """The class count a plain state dict of `model_name` was trained for, read from its classifier's shape.

    Returns:
        (num_classes, note), the note naming the tensor it was read from ("num_classes 19 inferred from
        decode_head.classifier.weight (19, 256, 1, 1)"); None when the file holds no class-dependent tensor.

    Raises:
        ValueError: naming the file and the tensors when their shapes imply different class counts.
    """
    counts: dict[str, int] = {}
    for key, (dim, per_class, offset) in class_dependent_keys(model_name, overrides).items():
        value = state.get(key)
        if value is None or value.dim() <= dim or (value.shape[dim] - offset) % per_class:
            continue
        counts[key] = (value.shape[dim] - offset) // per_class
    if not counts:
        return None
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{k} {tuple(state[k].shape)} -> {n}" for k, n in counts.items())
        raise ValueError(f"{origin}: the class-dependent tensors of {model_name} disagree on num_classes ({shown}); "
                         f"is it a checkpoint of another model?")
    key, count = next(iter(counts.items()))
    return count, f"num_classes {count} inferred from {key} {tuple(state[key].shape)}"


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


def _class_counts(model: nn.Module, state: dict[str, torch.Tensor], path) -> tuple[int, int] | None:
    """(the model's num_classes, the checkpoint's) when they differ, for a model built by `create_model`."""
    name = getattr(model, "model_name", None)
    if name is None:
        return None
    overrides = getattr(model, "model_overrides", {})
    try:
        own = infer_num_classes(name, model.state_dict(), overrides)
        theirs = infer_num_classes(name, state, overrides, origin=str(path))
    except (KeyError, ValueError):
        return None
    if own is None or theirs is None or own[0] == theirs[0]:
        return None
    return own[0], theirs[0]


def load_model_weights(model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Loads a checkpoint into `model` strictly, with an error that names the file and lists what does not match.

    Args:
        model: the model (built by `create_model`: its name appears in the error).
        path: the checkpoint file.
        state: its tensors when already read (`load_state_dict(path)`).
    """
    state = load_state_dict(path) if state is None else state
    own = model.state_dict()
    problems = describe_mismatch(own, state)
    if problems:
        name = getattr(model, "model_name", None)
        lines = [f"checkpoint {path} does not fit the model{f' {name}' if name else ''}:", *problems]
        counts = _class_counts(model, state, path)
        if counts is not None:
            lines.append(f"  the checkpoint has num_classes={counts[1]}, the model was built with "
                         f"num_classes={counts[0]}: build it with {counts[1]} classes (--num-classes / "
                         f"model.num_classes), or fine-tune with --init-from to change the class count")
        if state and all(k.startswith("backbone.") for k in state):
            lines.append("  it holds backbone weights only: use it as the run config's `model.pretrained`")
        elif not set(state) & set(own):
            lines.append("  none of its keys is a seglab key: convert a checkpoint of another code base with "
                         "`seglab convert --source official|mmseg|hf`")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True)


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
