"""Named models: `register_model`, `create_model`, `list_models`.

A model is registered with an options dataclass (its constructor arguments and their defaults) and a build
function taking that dataclass. `create_model` fills the options from the checkpoint's metadata and the
caller's keyword arguments (explicit arguments win) and refuses keys the options do not have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a model is built, not for listing names (a fast `seglab --help`)
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """One registered model."""

    name: str
    build: Callable[[Any], nn.Module]
    options: type
    published_params_m: float | None = None  # the paper's parameter count, in millions, at default options
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, build: Callable[[Any], nn.Module], options: type, published_params_m: float | None = None,
    description: str = "",
) -> ModelEntry:
    """Registers `build(options) -> nn.Module` under `name`; `options` is a dataclass type."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"options for {name!r} must be a dataclass type, got {options!r}")
    entry = ModelEntry(name, build, options, published_params_m, description)
    _REGISTRY[name] = entry
    return entry


def _ensure_loaded() -> None:
    import seglab.models  # noqa: F401  (importing registers every family)


class CheckpointNote(UserWarning):
    """Something `create_model` inferred from a checkpoint without seglab metadata (the CLI prints it as a note)."""


class UnknownModelError(KeyError):
    """A model name that is not registered; the message names close matches."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "`seglab models` lists them"
        raise UnknownModelError(f"unknown model {name}; {hint}")
    return _REGISTRY[name]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    import fnmatch

    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


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

    from seglab.engine.checkpoint import (
        checkpoint_meta,
        infer_num_classes,
        load_model_weights,
        load_state_dict,
    )

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
    model = entry.build(resolve_options(name, kwargs))
    model.model_name = name
    model.model_overrides = {k: v for k, v in kwargs.items() if k != "num_classes"}
    if checkpoint is not None:
        load_model_weights(model, checkpoint, state=state)
    return model
