"""Minimal equivalents of the mmcv 1.x / mmseg 0.x building blocks used by the mmseg-based official repositories.

Follows:
- open-mmlab/mmcv @ a8073c74bf83d62ec36a103f835faa4837fb6585 : `mmcv/cnn/bricks/conv_module.py` (`ConvModule`: conv,
  then the norm under the name `build_norm_layer` gives it, then the activation `activate`; the conv has a bias only
  without a norm, `bias='auto'`), `mmcv/cnn/bricks/norm.py` (`build_norm_layer`: names `bn` for BN / SyncBN, `gn` for
  GN, `ln` for LN; eps defaults to 1e-5). The ConvModule and build_norm_layer logic used here is the same in the
  mmcv 1.x releases the repositories pin.
- mmseg 0.x as copied in the official repositories (identical in the parts used here):
  NVlabs/SegFormer @ 65fa8cfa9b52b6ee7e8897a98705abf8570f9e32,
  Visual-Attention-Network/SegNeXt @ c87bcaef22ed2ad72ed3decb3727e5f879343516,
  SwinTransformer/Swin-Transformer-Semantic-Segmentation @ 87e6f90577435c94f3e92c7db1d36edc234d91f6,
  svip-lab/AS-MLP-Semantic-Segmentation @ c9838f92fae7090d9edc29d4fba7d55e078a91ac :
  `mmseg/ops/wrappers.py` (`resize` = `F.interpolate`, minus a warning), `mmseg/models/decode_heads/decode_head.py`
  (`BaseDecodeHead`: `conv_seg` 1x1 with bias, `Dropout2d` when the ratio is > 0, `_transform_inputs`, `cls_seg`),
  `mmseg/models/segmentors/encoder_decoder.py` (children `backbone`, `decode_head`, `auxiliary_head`; `encode_decode`
  resizes the head's logits to the input bilinearly with the head's `align_corners`).
- `mmseg/models/decode_heads/fcn_head.py` (`FCNHead`: `convs.{i}` ConvModules, `conv_cat` when `concat_input`), the
  same code for `num_convs >= 1` in the mmseg 0.11 of the Swin / AS-MLP segmentation repositories above and the
  mmseg 0.7 of chenhang98/BPR @ 9eafc3f1f6f6c4cfcdd0ceaf9f42bb2d07f90f4f (0.7 asserts `num_convs > 0`; 0.11's
  `num_convs=0`, an Identity, is used by no config here and not reproduced).

mmcv's `DropPath` (`mmcv/cnn/bricks/drop.py`) is timm's function: `official.timm_lite` holds it.
Only inference is reproduced: no losses, samplers, weight initialisation or SyncBN (which is BatchNorm in eval).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def build_norm_layer(cfg: dict, num_features: int) -> tuple[str, nn.Module]:
    """(name, layer) as mmcv names and builds it; requires_grad is irrelevant here."""
    cfg = dict(cfg)
    layer_type = cfg.pop("type")
    cfg.pop("requires_grad", None)
    eps = cfg.pop("eps", 1e-5)
    if layer_type in ("BN", "SyncBN"):
        return "bn", nn.BatchNorm2d(num_features, eps=eps, **cfg)
    if layer_type == "GN":
        return "gn", nn.GroupNorm(cfg.pop("num_groups"), num_features, eps=eps, **cfg)
    if layer_type == "LN":
        return "ln", nn.LayerNorm(num_features, eps=eps, **cfg)
    raise NotImplementedError(f"norm type {layer_type!r}")


def build_activation_layer(cfg: dict, inplace: bool) -> nn.Module:
    layer_type = cfg["type"]
    if layer_type == "ReLU":
        return nn.ReLU(inplace=inplace)
    if layer_type == "GELU":
        return nn.GELU()
    raise NotImplementedError(f"activation type {layer_type!r}")


class ConvModule(nn.Module):
    """mmcv's conv -> norm -> activation block (order ('conv', 'norm', 'act'), zero padding)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias="auto", conv_cfg=None, norm_cfg=None, act_cfg={"type": "ReLU"}, inplace=True):  # noqa: B006
        super().__init__()
        assert conv_cfg is None, "only the default Conv2d is reproduced"
        self.with_norm = norm_cfg is not None
        self.with_activation = act_cfg is not None
        if bias == "auto":
            bias = not self.with_norm
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=bias)
        self.norm_name = None
        if self.with_norm:
            self.norm_name, norm = build_norm_layer(norm_cfg, out_channels)
            self.add_module(self.norm_name, norm)
        if self.with_activation:
            self.activate = build_activation_layer(act_cfg, inplace)

    def forward(self, x):
        x = self.conv(x)
        if self.with_norm:
            x = getattr(self, self.norm_name)(x)
        if self.with_activation:
            x = self.activate(x)
        return x


def resize(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    if isinstance(size, torch.Size):
        size = tuple(int(s) for s in size)
    return F.interpolate(input, size, scale_factor, mode, align_corners)


class BaseDecodeHead(nn.Module):
    """mmseg 0.x `BaseDecodeHead`, inference part."""

    def __init__(self, in_channels, channels, *, num_classes, dropout_ratio=0.1, conv_cfg=None, norm_cfg=None,
                 act_cfg={"type": "ReLU"}, in_index=-1, input_transform=None, loss_decode=None,  # noqa: B006
                 decoder_params=None, ignore_index=255, sampler=None, align_corners=False):
        super().__init__()
        if input_transform is not None:
            assert len(in_channels) == len(in_index)
            in_channels = sum(in_channels) if input_transform == "resize_concat" else in_channels
        self.in_channels = in_channels
        self.input_transform = input_transform
        self.in_index = in_index
        self.channels = channels
        self.num_classes = num_classes
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        self.align_corners = align_corners
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def _transform_inputs(self, inputs):
        if self.input_transform == "resize_concat":
            inputs = [inputs[i] for i in self.in_index]
            inputs = [resize(x, size=inputs[0].shape[2:], mode="bilinear", align_corners=self.align_corners)
                      for x in inputs]
            return torch.cat(inputs, dim=1)
        if self.input_transform == "multiple_select":
            return [inputs[i] for i in self.in_index]
        return inputs[self.in_index]

    def cls_seg(self, feat):
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)


class FCNHead(BaseDecodeHead):
    def __init__(self, num_convs=2, kernel_size=3, concat_input=True, **kwargs):
        assert num_convs > 0, "mmseg 0.11's num_convs=0 (Identity) is not reproduced"
        self.num_convs = num_convs
        self.concat_input = concat_input
        self.kernel_size = kernel_size
        super().__init__(**kwargs)
        common = {"conv_cfg": self.conv_cfg, "norm_cfg": self.norm_cfg, "act_cfg": self.act_cfg}
        convs = [ConvModule(self.in_channels, self.channels, kernel_size=kernel_size, padding=kernel_size // 2,
                            **common)]
        for _ in range(num_convs - 1):
            convs.append(ConvModule(self.channels, self.channels, kernel_size=kernel_size,
                                    padding=kernel_size // 2, **common))
        self.convs = nn.Sequential(*convs)
        if concat_input:
            self.conv_cat = ConvModule(self.in_channels + self.channels, self.channels, kernel_size=kernel_size,
                                       padding=kernel_size // 2, **common)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        output = self.convs(x)
        if self.concat_input:
            output = self.conv_cat(torch.cat([x, output], dim=1))
        return self.cls_seg(output)


class EncoderDecoder(nn.Module):
    """mmseg 0.x `EncoderDecoder` (no neck), inference part: its children name the checkpoint keys."""

    def __init__(self, backbone: nn.Module, decode_head: BaseDecodeHead, auxiliary_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head
        self.align_corners = decode_head.align_corners

    def extract_feat(self, img):
        return self.backbone(img)

    def forward(self, img):
        """The decode head's logits at its own stride (what `encode_decode` resizes)."""
        return self.decode_head(self.extract_feat(img))

    def encode_decode(self, img):
        return resize(self(img), size=img.shape[2:], mode="bilinear", align_corners=self.align_corners)
