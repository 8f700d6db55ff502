"""Decode heads: `forward(features: list[Tensor]) -> logits` at the head's stride."""

from seglab.heads.segformer import SegFormerHead

__all__ = ["SegFormerHead"]
