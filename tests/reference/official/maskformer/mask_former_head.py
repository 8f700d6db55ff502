"""MaskFormer's head, written from the official file.

Follows facebookresearch/MaskFormer @ da3e60d85fdeedcb31476b5edd7d328826ce56cc :
`mask_former/modeling/heads/mask_former_head.py` (`MaskFormerHead`; `_version = 2`, so the `pixel_decoder.` prefix
is in the checkpoints). Same module names (`pixel_decoder`, `predictor`) and forward: the predictor reads the
`transformer_in_feature` backbone map ("res5") and the pixel decoder's mask features.
"""

from __future__ import annotations

from torch import nn


class MaskFormerHead(nn.Module):
    def __init__(self, input_shape, *, num_classes, pixel_decoder, transformer_predictor, transformer_in_feature,
                 loss_weight=1.0, ignore_value=-1):
        super().__init__()
        self.in_features = [k for k, _ in sorted(input_shape.items(), key=lambda x: x[1][1])]
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes

    def forward(self, features):
        mask_features, _ = self.pixel_decoder.forward_features(features)
        return self.predictor(features[self.transformer_in_feature], mask_features)
