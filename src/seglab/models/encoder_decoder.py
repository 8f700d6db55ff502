"""EncoderDecoder: backbone -> decode head (+ auxiliary heads for training). Tensors in, tensors out."""

from __future__ import annotations

import torch
from torch import nn

from seglab.pretrained_files import PretrainedMixin


class EncoderDecoder(PretrainedMixin, nn.Module):
    """A segmentation model made of a backbone and a decode head.

    `forward(images)` returns logits at the head's stride (`output_stride`); resizing, losses and
    test-time augmentation live outside the model so that it exports as is.

    Args:
        backbone: returns a list of NCHW feature maps, shallow to deep.
        decode_head: maps that list to logits.
        num_classes: classes predicted by the head.
        output_stride: stride of the head's logits relative to the input.
        aux_heads: optional extra heads used only by `forward_train`.
        align_corners: the bilinear `align_corners` the model was trained with; inference resizes its logits to
            the image with it (`seglab.inference.predict(..., align_corners=model.align_corners)`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        num_classes: int,
        output_stride: int,
        aux_heads: list[nn.Module] | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_heads = nn.ModuleList(aux_heads or [])
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.align_corners = align_corners

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(images))

    def forward_train(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.backbone(images)
        return self.decode_head(features), [head(features) for head in self.aux_heads]
