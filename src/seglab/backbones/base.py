"""The backbone feature contract: NCHW maps, shallow to deep, described by `feature_info`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and stride (relative to the input) of one backbone output."""

    channels: int
    stride: int
