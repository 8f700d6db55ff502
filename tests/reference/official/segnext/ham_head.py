"""SegNeXt's LightHamHead and the SegNeXt-T segmentor, written from the official code.

Follows Visual-Attention-Network/SegNeXt @ c87bcaef22ed2ad72ed3decb3727e5f879343516 :
`mmseg/models/decode_heads/ham_head.py` (`_MatrixDecomposition2DBase`, `NMF2D`, `Hamburger`, `LightHamHead`),
`local_configs/_base_/models/mscan.py` and `local_configs/segnext/tiny/segnext.tiny.512x512.ade.160k.py` (head
in_index (1, 2, 3), channels = ham_channels = 256, `ham_kwargs=dict(MD_R=16)`, GN(32) norms, dropout 0.1,
`align_corners=False`). Quirks kept: `NMF2D.__init__` overwrites `inv_t` with 1 (configs pass 100); the bases are
drawn afresh at every forward, in eval too (`RAND_INIT=True`), with `torch.rand((B * S, D, R))` from the default CPU
generator, then L2-normalised over D (the original then calls `.cuda()`; here they stay on the CPU); 6 / 7 update
steps in training / eval, then one more coefficient update; eps 1e-6 in the update denominators; the `no_grad`
decorators are commented out in the original (irrelevant in eval); `ham_in` is a ConvModule without norm and
activation (conv with bias), `ham_out` one with GN and no activation; ReLU after `ham_in` and on the residual sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from official.mmcv_lite import BaseDecodeHead, ConvModule, EncoderDecoder, resize
from official.segnext.mscan import mscan_t


class _MatrixDecomposition2DBase(nn.Module):
    def __init__(self, args=None):
        super().__init__()
        args = {} if args is None else dict(args)
        self.spatial = args.setdefault("SPATIAL", True)
        self.S = args.setdefault("MD_S", 1)
        self.D = args.setdefault("MD_D", 512)
        self.R = args.setdefault("MD_R", 64)
        self.train_steps = args.setdefault("TRAIN_STEPS", 6)
        self.eval_steps = args.setdefault("EVAL_STEPS", 7)
        self.inv_t = args.setdefault("INV_T", 100)
        self.eta = args.setdefault("ETA", 0.9)
        self.rand_init = args.setdefault("RAND_INIT", True)

    def local_inference(self, x, bases):
        coef = torch.bmm(x.transpose(1, 2), bases)  # (B*S, D, N)^T @ (B*S, D, R) -> (B*S, N, R)
        coef = F.softmax(self.inv_t * coef, dim=-1)
        for _ in range(self.train_steps if self.training else self.eval_steps):
            bases, coef = self.local_step(x, bases, coef)
        return bases, coef

    def forward(self, x):
        B, C, H, W = x.shape
        if self.spatial:
            D, N = C // self.S, H * W
            x = x.view(B * self.S, D, N)  # (B, C, H, W) -> (B*S, D, N)
        else:
            D, N = H * W, C // self.S
            x = x.view(B * self.S, N, D).transpose(1, 2)
        assert self.rand_init, "only the released setting (RAND_INIT=True) is reproduced"
        bases = self._build_bases(B, self.S, D, self.R)
        bases, coef = self.local_inference(x, bases)
        coef = self.compute_coef(x, bases, coef)
        x = torch.bmm(bases, coef.transpose(1, 2))  # (B*S, D, R) @ (B*S, N, R)^T -> (B*S, D, N)
        return x.view(B, C, H, W) if self.spatial else x.transpose(1, 2).view(B, C, H, W)


class NMF2D(_MatrixDecomposition2DBase):
    def __init__(self, args=None):
        super().__init__(args)
        self.inv_t = 1  # NOTE: the original overwrites the configured INV_T

    def _build_bases(self, B, S, D, R):
        return F.normalize(torch.rand((B * S, D, R)), dim=1)

    def local_step(self, x, bases, coef):
        numerator = torch.bmm(x.transpose(1, 2), bases)
        denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
        coef = coef * numerator / (denominator + 1e-6)
        numerator = torch.bmm(x, coef)
        denominator = bases.bmm(coef.transpose(1, 2).bmm(coef))
        bases = bases * numerator / (denominator + 1e-6)
        return bases, coef

    def compute_coef(self, x, bases, coef):
        numerator = torch.bmm(x.transpose(1, 2), bases)
        denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
        return coef * numerator / (denominator + 1e-6)


class Hamburger(nn.Module):
    def __init__(self, ham_channels=512, ham_kwargs=None, norm_cfg=None, **kwargs):
        super().__init__()
        self.ham_in = ConvModule(ham_channels, ham_channels, 1, norm_cfg=None, act_cfg=None)
        self.ham = NMF2D(ham_kwargs)
        self.ham_out = ConvModule(ham_channels, ham_channels, 1, norm_cfg=norm_cfg, act_cfg=None)

    def forward(self, x):
        enjoy = F.relu(self.ham_in(x), inplace=True)
        enjoy = self.ham_out(self.ham(enjoy))
        return F.relu(x + enjoy, inplace=True)


class LightHamHead(BaseDecodeHead):
    def __init__(self, ham_channels=512, ham_kwargs=None, **kwargs):
        super().__init__(input_transform="multiple_select", **kwargs)
        self.ham_channels = ham_channels
        self.squeeze = ConvModule(sum(self.in_channels), ham_channels, 1, norm_cfg=self.norm_cfg,
                                  act_cfg=self.act_cfg)
        self.hamburger = Hamburger(ham_channels, ham_kwargs, norm_cfg=self.norm_cfg)
        self.align = ConvModule(ham_channels, self.channels, 1, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def forward(self, inputs):
        inputs = self._transform_inputs(inputs)
        inputs = [resize(level, size=inputs[0].shape[2:], mode="bilinear", align_corners=self.align_corners)
                  for level in inputs]
        x = self.hamburger(self.squeeze(torch.cat(inputs, dim=1)))
        return self.cls_seg(self.align(x))


def segnext_t(num_classes: int) -> EncoderDecoder:
    """The SegNeXt-T segmentor of `local_configs/segnext/tiny/segnext.tiny.512x512.ade.160k.py`."""
    head = LightHamHead(
        in_channels=[64, 160, 256], in_index=[1, 2, 3], channels=256, ham_channels=256, ham_kwargs={"MD_R": 16},
        dropout_ratio=0.1, num_classes=num_classes, norm_cfg={"type": "GN", "num_groups": 32, "requires_grad": True},
        align_corners=False)
    return EncoderDecoder(mscan_t(), head)
