"""The training wrapper whose state dict the released `.pth` files hold, written from the official code.

Follows HRNet/HRNet-Semantic-Segmentation @ 0bbb2880446ddff2d78f8dd7e8c4c610151d5a51 (HRNet-OCR; the same in
pytorch-v1.1 @ 88419ab18813f2c9193985e2d4d31d3d07abe839): `lib/utils/utils.py` (`FullModel`: children `model` and
`loss`) and `lib/core/criterion.py` (`CrossEntropy`: child `criterion = nn.CrossEntropyLoss(weight=...)`, whose class
weights are the buffer `loss.criterion.weight`). `tools/train.py` saves `model.module.state_dict()` of the
DataParallel-wrapped FullModel, hence the keys `model.*` and `loss.criterion.weight`.
"""

from __future__ import annotations

from torch import nn


class CrossEntropy(nn.Module):
    def __init__(self, ignore_label=-1, weight=None):
        super().__init__()
        self.ignore_label = ignore_label
        self.criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_label)


class FullModel(nn.Module):
    def __init__(self, model, loss):
        super().__init__()
        self.model = model
        self.loss = loss
