"""BPR's segmentor and its two configurations, written from the repository's files.

Follows chenhang98/BPR @ 9eafc3f1f6f6c4cfcdd0ceaf9f42bb2d07f90f4f : `mmseg/models/segmentors/encoder_decoder_refine.py`
(`EncoderDecoderRefine`: the coarse mask mapped to {-1, +1} by `(m - 0.5) / 0.5` and concatenated as a 4th channel;
`encode_decode` resizes the logits to the input), `mmseg/models/segmentors/encoder_decoder.py` (`whole_inference`
with `rescale`: the logits resized bilinearly to the original patch size; `inference`: softmax over the classes),
`tools/test_float.py` (`output_float=True`: the foreground probability, channel 1, is the output),
`configs/bpr/hrnet18s_128.py`, `configs/bpr/hrnet48_256.py` (the HRNet stage settings; FCN head on all four branches,
2 classes, SyncBN, `align_corners=False`; `test_cfg.mode='whole'`). Checkpoint keys: `backbone.*`, `decode_head.*`.
The head is mmseg 0.7's `mmseg/models/decode_heads/fcn_head.py` (`FCNHead`, `official.mmcv_lite`: the same code as the
mmseg 0.11 one for `num_convs >= 1`), with `BaseDecodeHead` and `ConvModule` (`official.mmcv_lite`, the same as this
repository's `decode_head.py` and mmcv's). BPR's configs: `input_transform='resize_concat'` over the four HRNet
branches (bilinear to the first branch, `align_corners=False`), one 1x1 ConvModule (no conv bias, BN, ReLU), no
concat, no dropout; keys `decode_head.convs.0.conv`, `decode_head.convs.0.bn`, `decode_head.conv_seg`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from official.bpr.hrnet_refine import HRNetRefine
from official.mmcv_lite import FCNHead

NORM_CFG = {"type": "SyncBN", "requires_grad": True}


def _extra(blocks, modules, channels, stage1_blocks):
    return {
        "stage1": {"num_modules": 1, "num_branches": 1, "block": "BOTTLENECK", "num_blocks": (stage1_blocks,),
                   "num_channels": (64,)},
        "stage2": {"num_modules": modules[1], "num_branches": 2, "block": "BASIC", "num_blocks": (blocks,) * 2,
                   "num_channels": channels[:2]},
        "stage3": {"num_modules": modules[2], "num_branches": 3, "block": "BASIC", "num_blocks": (blocks,) * 3,
                   "num_channels": channels[:3]},
        "stage4": {"num_modules": modules[3], "num_branches": 4, "block": "BASIC", "num_blocks": (blocks,) * 4,
                   "num_channels": channels},
    }


CONFIGS = {  # configs/bpr/*.py: backbone `extra` and the network input size (crop_size)
    "hrnet18s_128": (_extra(2, (1, 1, 3, 2), (18, 36, 72, 144), 2), 128),
    "hrnet48_256": (_extra(4, (1, 1, 4, 3), (48, 96, 192, 384), 4), 256),
}


class EncoderDecoderRefine(nn.Module):
    def __init__(self, backbone, decode_head, use_coarse_mask=True, output_float=False):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.align_corners = decode_head.align_corners
        self.use_coarse_mask = use_coarse_mask
        self.output_float = output_float

    def encode_decode(self, img):
        out = self.decode_head(self.backbone(img))
        return F.interpolate(out, size=img.shape[2:], mode="bilinear", align_corners=self.align_corners)

    def simple_test(self, img, coarse_mask, ori_shape):
        """`img` (B, 3, S, S) normalised, `coarse_mask` (B, S, S) in {0, 1}; the output at `ori_shape` (rescale)."""
        if self.use_coarse_mask:
            img = torch.cat([img, ((coarse_mask - 0.5) / 0.5)[:, None, ...]], dim=1)
        seg_logit = F.interpolate(self.encode_decode(img), size=ori_shape, mode="bilinear",
                                  align_corners=self.align_corners)
        output = F.softmax(seg_logit, dim=1)
        return output[:, 1, :, :] if self.output_float else output.argmax(dim=1)


def build(config: str = "hrnet18s_128") -> EncoderDecoderRefine:
    extra, _ = CONFIGS[config]
    channels = list(extra["stage4"]["num_channels"])
    head = FCNHead(in_channels=channels, in_index=(0, 1, 2, 3), channels=sum(channels),
                   input_transform="resize_concat", kernel_size=1, num_convs=1, concat_input=False,
                   dropout_ratio=-1, num_classes=2, norm_cfg=NORM_CFG, align_corners=False)
    return EncoderDecoderRefine(HRNetRefine(extra), head, output_float=True)
