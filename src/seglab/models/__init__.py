"""Composed, registered segmentation models. Importing this package registers every family."""

from seglab.models import asmlp, cyclemlp, hrnet, segformer, segnext, upernet  # noqa: F401
from seglab.models.encoder_decoder import EncoderDecoder

__all__ = ["EncoderDecoder"]
