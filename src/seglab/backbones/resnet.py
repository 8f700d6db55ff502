"""ResNet (torchvision's v1.5 bottleneck ResNet) as a four-stage dense-prediction backbone.

Paper: "Deep Residual Learning for Image Recognition", He et al., CVPR 2016, arXiv:1512.03385. Code: torchvision
(BSD-3-Clause), used as is: this module builds `torchvision.models.resnet50/101` and keeps their stem and stages under
torchvision's own names (`conv1`, `bn1`, `layer1` .. `layer4`), so torchvision's ImageNet state dicts load into it
(minus the classifier `fc`). The stride of a downsampling bottleneck is on its 3x3 conv (v1.5), as in detectron2 with
`RESNETS.STRIDE_IN_1X1: False` (the setting of the MaskFormer / Mask2Former ResNet configs).

What we changed: only the classifier (`avgpool`, `fc`) is left out, and the forward returns the four stage maps.
"""

from __future__ import annotations

import torch
from torch import nn

from seglab.backbones.base import FeatureInfo

# depth -> torchvision builder name
RESNET_DEPTHS: dict[int, str] = {50: "resnet50", 101: "resnet101"}


class ResNet(nn.Module):
    """torchvision's bottleneck ResNet returning the outputs of `layer1` .. `layer4` (strides 4, 8, 16, 32, widths
    256, 512, 1024, 2048).

    Args:
        depth: 50 or 101.
        in_channels: input image channels (3 for torchvision's weights).
        norm_layer: the norm of every conv (BatchNorm2d; torchvision's key names hold for any norm with the same
            parameters).
    """

    def __init__(
        self, depth: int = 50, in_channels: int = 3, norm_layer: type[nn.Module] = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        import torchvision

        net = getattr(torchvision.models, RESNET_DEPTHS[depth])(weights=None, norm_layer=norm_layer)
        self.depth = depth
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.feature_info = [FeatureInfo(channels=64 * 4 * 2**i, stride=4 * 2**i) for i in range(4)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> four maps (B, 256 * 2**i, ~H / 2**(i + 2), ~W / 2**(i + 2))."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs
