"""Backbones: `forward(x) -> list[Tensor]` NCHW, shallow to deep, with `feature_info`."""

from seglab.backbones.base import FeatureInfo
from seglab.backbones.mit import MIT_CONFIGS, MiTConfig, MixVisionTransformer

__all__ = ["FeatureInfo", "MIT_CONFIGS", "MiTConfig", "MixVisionTransformer"]
