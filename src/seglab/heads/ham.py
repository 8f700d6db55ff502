"""SegNeXt's light Hamburger head: global context by non-negative matrix factorisation (NMF).

Papers: "Is Attention Better Than Matrix Decomposition?", Geng et al., ICLR 2021 (the Hamburger), and SegNeXt,
arXiv:2209.08575 (the light head). Facts from Visual-Attention-Network/SegNeXt `ham_head.py` and mmsegmentation
1.x `LightHamHead`: stages 2-4 resized to stride 8 and concatenated, a 1x1 squeeze conv (GN + ReLU), the
Hamburger (1x1 conv, ReLU, NMF, 1x1 conv + GN, residual, ReLU), a 1x1 align conv (GN + ReLU), dropout and a
1x1 classifier.

NMF bases. The original draws random bases (uniform, L2-normalised) from the CPU generator at every forward, in
evaluation too, so the same image can give different outputs. `eval_bases="random"` keeps that behaviour (to
reproduce official numbers with the run's seed); the default `eval_bases="fixed"` starts every evaluation from
one set of bases drawn once from a generator seeded with `seed`, shared by all images, so predictions are
deterministic, independent of the batch, and export to ONNX as constants. Training always draws fresh bases,
as the original does.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import ConvNormAct, resize

EVAL_BASES = ("fixed", "random")


def nmf_bases(batch: int, channels: int, rank: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random NMF bases as the original draws them: uniform [0, 1) on the CPU, L2-normalised over channels.

    Returns:
        A (batch, channels, rank) float32 CPU tensor; the original moves it to the feature's device afterwards.
    """
    bases = torch.rand((batch, channels, rank), generator=generator, device="cpu")
    return F.normalize(bases, dim=1)


class NMF2D(nn.Module):
    """Non-negative matrix factorisation `x ~ bases @ coef^T` of a (B, C, H, W) map by multiplicative updates.

    The map is factorised per image as a (C, H*W) matrix (`MD_S = 1`); the output is the rank-`rank`
    reconstruction. Runs in float32 whatever the autocast state: the updates divide by sums with eps 1e-6.
    Gradients flow through every unrolled step (SegNeXt removed the original Hamburger's one-step gradient).

    Args:
        channels: C.
        rank: the number of bases (`MD_R`).
        train_steps: update steps in training (6 in SegNeXt).
        eval_steps: update steps in evaluation (7 in SegNeXt).
        eval_bases: "fixed" (deterministic, default) or "random" (the original's fresh draw per forward).
        seed: seed of the fixed bases.
        eps: added to the update denominators.
    """

    def __init__(
        self,
        channels: int,
        rank: int,
        train_steps: int = 6,
        eval_steps: int = 7,
        eval_bases: str = "fixed",
        seed: int = 0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if eval_bases not in EVAL_BASES:
            raise ValueError(f"eval_bases must be one of {', '.join(EVAL_BASES)}, got {eval_bases!r}")
        self.channels = channels
        self.rank = rank
        self.train_steps = train_steps
        self.eval_steps = eval_steps
        self.eval_bases = eval_bases
        self.eps = eps
        # NOTE: the original configs pass inv_t=100, but NMF2D's constructor resets it to 1; the softmax that
        # initialises the coefficients therefore has temperature 1 here, always.
        # Drawn on the CPU with its own generator, whatever the default device (meta, cuda) is. A plain float32
        # attribute, not a buffer: not saved, and untouched by `model.half()` / `to_empty()`; moved per forward.
        self.fixed_bases = nmf_bases(1, channels, rank, torch.Generator(device="cpu").manual_seed(seed))

    def initial_bases(self, batch: int, device: torch.device) -> torch.Tensor:
        """(batch, C, rank) starting bases for this forward."""
        if not self.training and self.eval_bases == "fixed":
            return self.fixed_bases.to(device).expand(batch, -1, -1)
        return nmf_bases(batch, self.channels, self.rank).to(device)

    def update_coef(self, x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """`coef * (x^T bases) / (coef (bases^T bases) + eps)`, shapes (B, N, R)."""
        numerator = torch.bmm(x.transpose(1, 2), bases)
        denominator = torch.bmm(coef, torch.bmm(bases.transpose(1, 2), bases))
        return coef * numerator / (denominator + self.eps)

    def update_bases(self, x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """`bases * (x coef) / (bases (coef^T coef) + eps)`, shapes (B, C, R)."""
        numerator = torch.bmm(x, coef)
        denominator = torch.bmm(bases, torch.bmm(coef.transpose(1, 2), coef))
        return bases * numerator / (denominator + self.eps)

    def factorize(self, x: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
        """Reconstruction of `x` (B, C, N) from the starting `bases` (B, C, R); the steps follow `self.training`."""
        coef = torch.softmax(torch.bmm(x.transpose(1, 2), bases), dim=-1)  # (B, N, R)
        for _ in range(self.train_steps if self.training else self.eval_steps):
            coef = self.update_coef(x, bases, coef)
            bases = self.update_bases(x, bases, coef)
        coef = self.update_coef(x, bases, coef)
        return torch.bmm(bases, coef.transpose(1, 2))  # (B, C, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        if channels != self.channels:
            raise ValueError(f"NMF2D expects {self.channels} channels, got input of shape {tuple(x.shape)}")
        flat = x.float().reshape(batch, channels, height * width)  # (B, C, H, W) -> (B, C, N)
        if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = self.factorize(flat, self.initial_bases(batch, x.device))
        else:
            out = self.factorize(flat, self.initial_bases(batch, x.device))
        return out.reshape(batch, channels, height, width).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rank={self.rank}, steps={self.train_steps}/{self.eval_steps}, "
                f"eval_bases={self.eval_bases!r}")


class Hamburger(nn.Module):
    """`ReLU(x + ham_out(NMF(ReLU(ham_in(x)))))`: 1x1 conv with bias, NMF, 1x1 conv + GroupNorm."""

    def __init__(self, channels: int, nmf: NMF2D, gn_groups: int = 32) -> None:
        super().__init__()
        self.ham_in = ConvNormAct(channels, channels, 1, norm_layer=None, act_layer=None)
        self.ham = nmf
        self.ham_out = ConvNormAct(channels, channels, 1, norm_layer=partial(nn.GroupNorm, gn_groups), act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enjoy = self.ham(F.relu(self.ham_in(x)))
        return F.relu(x + self.ham_out(enjoy))


class LightHamHead(nn.Module):
    """The light Hamburger decode head over the stride-8, -16 and -32 features.

    Args:
        in_channels: channels of the selected backbone outputs (stages 2-4).
        in_index: which backbone outputs to use.
        ham_channels: width of the squeeze conv and the Hamburger.
        channels: width of the align conv, i.e. the classifier's input.
        num_classes: output classes.
        rank: number of NMF bases (`MD_R`).
        train_steps: NMF steps in training.
        eval_steps: NMF steps in evaluation.
        eval_bases: NMF starting bases in evaluation, "fixed" or "random" (see the module docstring).
        seed: seed of the fixed bases.
        dropout: Dropout2d rate before the classifier.
        align_corners: `align_corners` of the bilinear resizes.
        gn_groups: groups of the GroupNorms.
    """

    def __init__(
        self,
        in_channels: tuple[int, ...] | list[int],
        in_index: tuple[int, ...],
        ham_channels: int,
        channels: int,
        num_classes: int,
        rank: int,
        train_steps: int = 6,
        eval_steps: int = 7,
        eval_bases: str = "fixed",
        seed: int = 0,
        dropout: float = 0.1,
        align_corners: bool = False,
        gn_groups: int = 32,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_index):
            raise ValueError(f"in_channels {tuple(in_channels)} and in_index {tuple(in_index)} differ in length")
        self.in_index = tuple(in_index)
        self.align_corners = align_corners
        group_norm = partial(nn.GroupNorm, gn_groups)
        self.squeeze = ConvNormAct(sum(in_channels), ham_channels, 1, norm_layer=group_norm, act_layer=nn.ReLU)
        nmf = NMF2D(ham_channels, rank, train_steps, eval_steps, eval_bases, seed)
        self.hamburger = Hamburger(ham_channels, nmf, gn_groups)
        self.align = ConvNormAct(ham_channels, channels, 1, norm_layer=group_norm, act_layer=nn.ReLU)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        selected = [features[i] for i in self.in_index]
        size = selected[0].shape[-2:]
        x = torch.cat([resize(f, size, self.align_corners) for f in selected], dim=1)
        x = self.align(self.hamburger(self.squeeze(x)))
        return self.classifier(self.dropout(x))
