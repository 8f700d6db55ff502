"""Named models: `register_model`, `create_model`, `list_models`.

A model is registered with an options dataclass (its constructor arguments and their defaults) and a build
function taking that dataclass. `create_model` fills the options from the checkpoint's metadata and the
caller's keyword arguments (explicit arguments win) and refuses keys the options do not have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a model is built, not for listing names (a fast `seglab --help`)
    import torch
    from torch import nn

    from seglab.models.spec import ModelSpec


_REGISTRY: dict[str, ModelSpec] = {}
_LOADED = False


def register_model(
    name: str, build: Callable[..., nn.Module], options: type, published_params_m: float | None = None,
    description: str = "", variant: Any = None, task: str = "semantic",
) -> ModelSpec:
    """Registers a model defined outside seglab: `build(options)` (or `build(variant, options)`) -> `nn.Module`;
    `options` is a dataclass type. seglab's own models are the `ModelSpec` rows of `seglab.models.ALL_MODELS`."""
    from seglab.models.spec import TASKS, ModelSpec

    _ensure_loaded()
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    spec = ModelSpec(name, build, options, variant, published_params_m, description, task)
    _add(spec)
    return spec


def _add(spec: ModelSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    if not dataclasses.is_dataclass(spec.options):
        raise TypeError(f"options for {spec.name!r} must be a dataclass type, got {spec.options!r}")
    _REGISTRY[spec.name] = spec


def _ensure_loaded() -> None:
    """Reads the model table (`seglab.models.ALL_MODELS`) once; torch is imported here, not for listing names."""
    global _LOADED
    if not _LOADED:
        from seglab.models import ALL_MODELS

        _LOADED = True
        for spec in ALL_MODELS:
            _add(spec)


class CheckpointNote(UserWarning):
    """Something `create_model` inferred from a checkpoint without seglab metadata (the CLI prints it as a note)."""


class UnknownModelError(KeyError):
    """A model name that is not registered; the message names close matches."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def get_entry(name: str) -> ModelSpec:
    _ensure_loaded()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "`seglab models` lists them"
        raise UnknownModelError(f"unknown model {name}; {hint}")
    return _REGISTRY[name]


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered model names matching a shell-style pattern (and `task`: semantic / instance / refine), sorted."""
    import fnmatch

    _ensure_loaded()
    return sorted(n for n, spec in _REGISTRY.items()
                  if fnmatch.fnmatch(n, pattern) and (task is None or spec.task == task))


def resolve_options(name: str, overrides: dict[str, Any]):
    """The options dataclass of `name` with `overrides` applied; unknown keys raise `TypeError`."""
    entry = get_entry(name)
    valid = [f.name for f in dataclasses.fields(entry.options)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TypeError(f"{name} got unknown override(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    return dataclasses.replace(entry.options(), **overrides)


def create_model(
    name: str, num_classes: int | None = None, checkpoint: str | Path | None = None, **overrides: Any
) -> nn.Module:
    """Builds a registered model, optionally loading a checkpoint.

    Args:
        name: a name from `list_models()`.
        num_classes: output classes; default the checkpoint's, else the model's default.
        checkpoint: a seglab safetensors file, whose recorded `num_classes` and overrides apply unless given here; or
            a plain state dict of this model with seglab's key names (a `.safetensors` without seglab metadata, a
            `.pth` / `.pt` read with `torch.load(weights_only=True)`): the model gets its default options and, unless
            `num_classes` is given, the class count read from the file's classifier, reported as a
            `CheckpointNote` warning.
        **overrides: constructor options of the model (see `seglab info NAME`).
    """
    import warnings

    from seglab.checkpoint import checkpoint_meta, load_state_dict

    entry = get_entry(name)  # an unknown name is the first thing to say
    kwargs: dict[str, Any] = {}
    meta = state = None
    if checkpoint is not None:
        meta = checkpoint_meta(checkpoint)
    if meta is not None:
        if meta.model != name:
            raise ValueError(f"checkpoint {checkpoint} was made for model {meta.model}, not {name}")
        if meta.extra.get("backbone_only") == "true":
            raise ValueError(f"{checkpoint} holds backbone weights only: use it as the run config's "
                             f"`model.pretrained`, not as a model checkpoint")
        kwargs.update(meta.overrides)
        if meta.num_classes is not None:
            kwargs["num_classes"] = meta.num_classes
    kwargs.update(overrides)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if checkpoint is not None and meta is None:  # a plain state dict: seglab's key names, no metadata
        state = load_state_dict(checkpoint)
        if "num_classes" not in kwargs:
            resolve_options(name, kwargs)  # unknown overrides fail here, before the meta-device builds
            inferred = infer_num_classes(name, state, kwargs, origin=str(checkpoint))
            if inferred is not None:
                kwargs["num_classes"] = inferred[0]
                warnings.warn(f"{checkpoint}: {inferred[1]} (a plain state dict without seglab metadata)",
                              CheckpointNote, stacklevel=2)
    model = entry.make(resolve_options(name, kwargs))
    model.model_name = name
    model.model_overrides = {k: v for k, v in kwargs.items() if k != "num_classes"}
    if checkpoint is not None:
        load_model_weights(model, checkpoint, state=state)
    return model


# ---------------------------------------------------------------------------------------------------- class counts
def class_dependent_keys(model_name: str, overrides: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """The tensors of `create_model(model_name, **overrides)` whose shape follows `num_classes`, found by building the
    model on the meta device with 2 and with 3 classes: key -> (dim, per_class, offset), where
    `shape[dim] == per_class * num_classes + offset` (e.g. `decode_head.classifier.weight` -> (0, 1, 0), MaskFormer's
    `class_embed.weight` with its "no object" row -> (0, 1, 1))."""
    import torch

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
    from seglab.checkpoint import describe_mismatch, load_state_dict

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


