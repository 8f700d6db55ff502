"""Optimizers with parameter groups (mmcv `paramwise_cfg` semantics) and the warm-up + poly schedule."""

from __future__ import annotations

import torch
from torch import nn

from seglab.config import OptimConfig, ScheduleConfig


def _match_key(name: str, keys: list[str]) -> str | None:
    """mmcv's rule: keys sorted alphabetically, then by length (longest first); the first substring match wins."""
    for key in sorted(sorted(keys), key=len, reverse=True):
        if key in name:
            return key
    return None


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """Parameters grouped by their `lr` and `weight_decay` after the `paramwise` multipliers."""
    keys = list(config.paramwise)
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = _match_key(name, keys)
        mult = config.paramwise.get(key, {}) if key else {}
        unknown = set(mult) - {"lr_mult", "decay_mult"}
        if unknown:
            raise ValueError(f"optim.paramwise.{key}: unknown field(s) {sorted(unknown)}; valid: lr_mult, decay_mult")
        lr = config.lr * mult.get("lr_mult", 1.0)
        decay = config.weight_decay * mult.get("decay_mult", 1.0)
        group = groups.setdefault((lr, decay), {"params": [], "names": [], "lr": lr, "initial_lr": lr,
                                                "weight_decay": decay})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ValueError(f"optim.name: unknown optimizer {config.name!r}; valid: adamw, sgd")


def scheduled_lr(iteration: int, base_lr: float, schedule: ScheduleConfig) -> float:
    """Learning rate at `iteration` for a group whose base rate is `base_lr` (mmcv poly + linear warm-up)."""
    progress = min(iteration, schedule.iters) / max(schedule.iters, 1)
    lr = (base_lr - schedule.min_lr) * (1.0 - progress) ** schedule.power + schedule.min_lr
    if iteration < schedule.warmup_iters:
        k = (1.0 - iteration / schedule.warmup_iters) * (1.0 - schedule.warmup_ratio)
        lr *= 1.0 - k
    return lr


def set_lr(optimizer: torch.optim.Optimizer, iteration: int, schedule: ScheduleConfig) -> float:
    """Sets every group's lr for `iteration`; returns the first group's (for logging)."""
    for group in optimizer.param_groups:
        group["lr"] = scheduled_lr(iteration, group["initial_lr"], schedule)
    return optimizer.param_groups[0]["lr"]
