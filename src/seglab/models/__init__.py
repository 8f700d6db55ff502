"""Composed, registered segmentation models. Importing this package registers every family."""

from seglab.models import (  # noqa: F401
    asmlp,
    cyclemlp,
    hrnet,
    maskformer,
    segformer,
    segmenter,
    segnext,
    segvit,
    setr,
    upernet,
)
from seglab.models.encoder_decoder import EncoderDecoder

__all__ = ["EncoderDecoder"]
