"""Composed segmentation models: one family per file, each declaring its `MODELS` (`ModelSpec` rows); `ALL_MODELS`
is the table the factory (`seglab.registry`) reads."""

from seglab.models import (
    asmlp,
    bpr,
    cyclemlp,
    hrnet,
    mask_rcnn,
    maskformer,
    segformer,
    segmenter,
    segnext,
    segvit,
    setr,
    upernet,
)
from seglab.models.encoder_decoder import EncoderDecoder
from seglab.models.spec import ModelSpec

ALL_MODELS: tuple[ModelSpec, ...] = (
    *segformer.MODELS, *segnext.MODELS, *upernet.MODELS, *hrnet.MODELS, *cyclemlp.MODELS, *asmlp.MODELS,
    *setr.MODELS, *segvit.MODELS, *segmenter.MODELS, *maskformer.MODELS, *mask_rcnn.MODELS, *bpr.MODELS,
)

__all__ = ["ALL_MODELS", "EncoderDecoder", "ModelSpec"]
