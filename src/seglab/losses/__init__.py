"""Losses, called by the trainer (never inside a model)."""

from seglab.losses.cross_entropy import cross_entropy, segmentation_loss

__all__ = ["cross_entropy", "segmentation_loss"]
