"""BPR's refinement network (Tang et al., CVPR 2021, chenhang98/BPR): HRNetV2 on an image patch and its coarse mask.

The refinement pipeline around it (boundary patches, proposals, pasting, the `refine` API) is in
`seglab.instance.bpr`; its training in `seglab.engine.refine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seglab.backbones.hrnet import HRNET_CONFIGS, STEM_CHANNELS, HRNet
from seglab.heads.hrnetv2 import HRNetV2Head
from seglab.models.spec import ModelSpec


@dataclass(frozen=True)
class BPRVariant:
    """One refinement network: the HRNet stage config (`HRNET_CONFIGS` key) and the square network input size."""

    hrnet: str
    input_size: int


BPR_VARIANTS: dict[str, BPRVariant] = {
    "bpr_hrnet18s": BPRVariant("w18s", 128),  # configs/bpr/hrnet18s_128.py
    "bpr_hrnet48": BPRVariant("w48", 256),  # configs/bpr/hrnet48_256.py
}


class BPRNet(nn.Module):
    """HRNetV2 refinement network: `forward(image (B, 3, S, S), mask (B, 1, S, S) in {-1, +1})` -> 2-class logits
    (bg, fg) at stride 4.

    Numerics follow the official code (BPR's mmseg 0.7 HRNet and FCN head): bilinear upsampling in the HRNet fuse
    layers (mmseg's x2^k then resize to the branch, `fuse_upsample="bilinear_scale"`), `align_corners=False` in the V2
    concatenation, a head fuse conv without bias, BN momentum 0.1.

    Args:
        hrnet: `HRNET_CONFIGS` key (`w18s`, `w48`).
        input_size: the square network input size (recorded for `refine`).
        num_classes: output classes (2 in BPR).
        fuse_upsample: the HRNet fuse-layer upsampling (`seglab.backbones.hrnet.FUSE_UPSAMPLE_MODES`); "nearest" only
            for networks trained with it (seglab checkpoints written before this default was corrected).
    """

    def __init__(
        self, hrnet: str = "w18s", input_size: int = 128, num_classes: int = 2, fuse_upsample: str = "bilinear_scale"
    ) -> None:
        super().__init__()
        if hrnet not in HRNET_CONFIGS:
            raise KeyError(f"unknown HRNet config {hrnet!r}; available: {', '.join(HRNET_CONFIGS)}")
        self.input_size = input_size
        self.num_classes = num_classes
        self.fuse_upsample = fuse_upsample
        self.backbone = HRNet(HRNET_CONFIGS[hrnet], fuse_upsample=fuse_upsample, align_corners=False, neck="v2")
        # the mask's own stem conv, summed with the image conv's output before the stem's first BN
        self.conv_mask = nn.Conv2d(1, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.decode_head = HRNetV2Head(
            [f.channels for f in self.backbone.feature_info], num_classes, align_corners=False, conv_bias=False
        )

    def stem(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The HRNet stem with the mask added after the first conv: conv1(img) + conv_mask(mask), BN, ReLU, conv2."""
        first = self.backbone.stem.conv1
        x = first.act(first.norm(first.conv(image) + self.conv_mask(mask)))
        return self.backbone.stem.conv2(x)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3 or mask.shape != (image.shape[0], 1, *image.shape[2:]):
            raise ValueError(f"BPRNet expects image (B, 3, S, S) and mask (B, 1, S, S), "
                             f"got {tuple(image.shape)} and {tuple(mask.shape)}")
        bb = self.backbone
        feats = [bb.layer1(self.stem(image, mask))]
        for transition, stage in zip(bb.transitions, bb.stages, strict=True):
            feats = stage([layer(feats[min(i, len(feats) - 1)]) for i, layer in enumerate(transition)])
        return self.decode_head(bb.neck(feats))


def build_bpr(name: str = "bpr_hrnet18s", fuse_upsample: str = "bilinear_scale") -> BPRNet:
    """The refinement network of a `BPR_VARIANTS` entry (`fuse_upsample`: see `BPRNet`)."""
    if name not in BPR_VARIANTS:
        raise KeyError(f"unknown BPR variant {name!r}; available: {', '.join(BPR_VARIANTS)}")
    v = BPR_VARIANTS[name]
    return BPRNet(v.hrnet, v.input_size, fuse_upsample=fuse_upsample)


@dataclass(frozen=True)
class BPROptions:
    """Constructor options of the BPR refinement networks (`create_model("bpr_hrnet18s", ...)`)."""

    num_classes: int = 2
    fuse_upsample: str = "bilinear_scale"


def build_bpr_network(name: str, options: BPROptions) -> BPRNet:
    """A `BPR_VARIANTS` network from its registered name and options."""
    variant = BPR_VARIANTS[name]
    return BPRNet(variant.hrnet, variant.input_size, options.num_classes, fuse_upsample=options.fuse_upsample)


MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        _name,
        build=build_bpr_network,
        variant=_name,
        options=BPROptions,
        description=f"BPR refinement network: HRNetV2-{_variant.hrnet.upper()} on image + mask patches "
                    f"({_variant.input_size} px), 2 classes",
        task="refine",
    )
    for _name, _variant in BPR_VARIANTS.items()
)
