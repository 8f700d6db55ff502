"""The weight initialisation of the transformer-era backbones (MiT, MSCAN, Swin)."""

from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module, conv_fan_out: bool = True) -> None:
    """Truncated normal (std 0.02) for linears, unit norms, and (`conv_fan_out`) fan-out normal convs; for `apply`.

    Args:
        module: the module being visited.
        conv_fan_out: initialise convolutions with `N(0, 2 / fan_out)` as MiT and MSCAN do; Swin leaves them at
            PyTorch's default.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)) and module.weight is not None:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d) and conv_fan_out:
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
