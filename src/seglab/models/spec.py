"""`ModelSpec`: one registered model as data (name, builder, options dataclass, variant, published parameter count,
task). Every family file declares its `MODELS` tuple; `seglab.models.ALL_MODELS` gathers them and the factory
(`seglab.registry`) reads that table, so no model module imports the factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

TASKS = ("semantic", "instance", "refine")


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
        name: the registered name (`segformer_b0`).
        build: `build(variant, options) -> nn.Module`, or `build(options)` when `variant` is None.
        options: the options dataclass (constructor arguments with their defaults; `seglab info NAME`).
        variant: the family's variant key passed to `build` (`"b0"`).
        published_params_m: the paper's parameter count in millions at the default options, when published.
        description: one line for `seglab models`.
        task: `semantic` (logits per pixel), `instance` (detections with masks) or `refine` (BPR patches).
    """

    name: str
    build: Callable[..., nn.Module]
    options: type
    variant: Any = None
    published_params_m: float | None = None
    description: str = ""
    task: str = "semantic"

    def make(self, options: Any) -> nn.Module:
        return self.build(options) if self.variant is None else self.build(self.variant, options)
