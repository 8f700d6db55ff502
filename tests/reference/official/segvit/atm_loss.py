"""The buffers of SegViT's loss module, which the released checkpoints hold, written from the official files.

Follows zbwxp/SegVit @ 763137e687ab830dd4e7352b80ab27e54e0b07e4 : `losses/atm_loss.py` (`ATMLoss`: a `criterion`
child) and `losses/criterion.py` (`SetCriterion`: the persistent buffer `empty_weight`, ones with `eos_coef` 0.1 for
the no-object class). mmseg's `BaseDecodeHead` builds it as the head's `loss_decode`, so checkpoints hold
`decode_head.loss_decode.criterion.empty_weight` (and, for `TPNATMHead`, also `decode_head.atm.loss_decode...`, since
its inner `ATMSingleHead` is built with the same keyword arguments). Only the state is reproduced, not the loss.
"""

from __future__ import annotations

import torch
from torch import nn


class SetCriterion(nn.Module):
    def __init__(self, num_classes, eos_coef=0.1):
        super().__init__()
        self.num_classes = num_classes
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)


class ATMLoss(nn.Module):
    def __init__(self, num_classes, dec_layers, mask_weight=20.0, dice_weight=1.0, cls_weight=1.0, loss_weight=1.0):
        super().__init__()
        self.criterion = SetCriterion(num_classes)
        self.loss_weight = loss_weight


def build_loss(cfg):
    cfg = dict(cfg)
    assert cfg.pop("type") == "ATMLoss"
    return ATMLoss(**cfg)
