"""Conv -> norm -> activation, the one "ConvModule" of seglab."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


class ConvNormAct(nn.Sequential):
    """A conv followed by an optional norm and an optional activation.

    Child names `conv`, `norm`, `act` are part of the checkpoint format. As in mmcv's ConvModule,
    the conv has a bias only when there is no norm.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: conv stride.
        padding: conv padding; default `kernel_size // 2`.
        groups: conv groups.
        norm_layer: norm constructor taking the channel count, or None.
        act_layer: activation constructor, or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=norm_layer is None
        )
        if norm_layer is not None:
            self.norm = norm_layer(out_channels)
        if act_layer is not None:
            self.act = act_layer()
