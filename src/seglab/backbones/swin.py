"""Swin Transformer, the hierarchical shifted-window backbone, for dense prediction.

Paper: "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", Liu et al., ICCV 2021,
arXiv:2103.14030. Original code: microsoft/Swin-Transformer and SwinTransformer/Swin-Transformer-Semantic-Segmentation
(MIT License).

Written for seglab from the paper and the facts of the original code: a 4x4 stride-4 patch embedding with LayerNorm;
blocks alternating window attention (W-MSA, even blocks) and shifted-window attention (SW-MSA, odd blocks: cyclic shift
by `window // 2` and a mask that keeps tokens of different regions of a wrapped window apart); a learned relative
position bias table of `(2w - 1)^2` entries per head; patch merging (2x2 neighbours concatenated in the order
(0,0), (1,0), (0,1), (1,1), LayerNorm, Linear 4C -> 2C without bias) at the end of stages 0-2; an output LayerNorm per
stage for dense prediction; no absolute position embedding. Any input size: the image is padded right/bottom to a
multiple of 4, each block pads its normalised map with zeros to window multiples and crops back, and patch merging
pads odd sizes.

What we changed: the attention runs on `F.scaled_dot_product_attention` with the position bias and the shift mask added
into one float mask, all windows of a batch in one call; the masks are built per forward for the padded size. Padding,
the cyclic shift (`torch.roll` in the original) and the window partition are folded into one gather index per stage
and shift (`WindowLayout`), and their inverses and the crop into one scatter: one copy each way, and the qkv / output
projections run on the map's tokens only (a padded slot reads a prepended zero token, whose projection is the bias, as
the original's zero padding gives). The results equal the original's procedure exactly. By default
(`shrink_window=True`) a stage whose map is no larger than the window along a dimension uses the map size as the window
along it and no shift there (as the classification code, timm and transformers do): the bias of such a smaller window
reads the sub-range of offsets of the full table. The segmentation code (Swin-Transformer-Semantic-Segmentation, and
mmseg's `SwinTransformer`) keeps the full window and its shift at every size and pads: `shrink_window=False`; the two
differ only where a stage's map is no larger than the window (a side of at most 7 x 32 = 224 pixels for window 7).
While exporting (`torch.compiler.is_exporting()`) nothing branches on a size: the general path (zero token, shifted
order and region mask for every stage, padding always applied) serves every size, so an ONNX graph is right at sizes
other than the example's. Module names are seglab's (`seglab.convert.swin` maps the official, mmseg and timm layouts);
the features stay channels-last (B, H, W, C) inside the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seglab.backbones.base import FeatureInfo
from seglab.layers import DropPath, drop_path_rates
from seglab.layers.init import init_weights
from seglab.layers.mlp import Mlp

# the additive mask value of the original code for token pairs of different shifted regions
MASK_VALUE = -100.0


@dataclass(frozen=True)
class SwinConfig:
    """Hyper-parameters of one Swin variant (patch size 4, embedding width doubling per stage).

    Args:
        embed_dim: channels of the first stage (C); stage i has C * 2**i.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: side of the square attention window (7 for the 224-pretrained models, 12 for 384).
        mlp_ratio: hidden width of the MLP relative to the stage width.
    """

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 7
    mlp_ratio: float = 4.0


SWIN_CONFIGS: dict[str, SwinConfig] = {
    "t": SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "s": SwinConfig(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "b": SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "l": SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}


def relative_position_index(window_size: int) -> torch.Tensor:
    """Row of the bias table for every token pair of a square window: `(dy + w - 1) * (2w - 1) + dx + w - 1`.

    Returns:
        A (w*w, w*w) long tensor; entry [i, j] indexes the offset of token i relative to token j.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, w*w), rows then columns
    offsets = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # (2, w*w, w*w), shifted to >= 0
    return offsets[0] * (2 * window_size - 1) + offsets[1]


def stage_window(
    height: int, width: int, window_size: int, shrink: bool = True
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Window and shift of one stage for a (height, width) map.

    With `shrink`, along a dimension no larger than the window, the window shrinks to the map and there is no shift
    (shifting a single window would only wrap it onto itself). Written as min/arithmetic without branches, so that an
    exported graph keeps the rule for every size (the sizes may be symbolic). Without it (the segmentation code), the
    full window and shift at every size: the map is padded to the window.

    Returns:
        ((window_h, window_w), (shift_h, shift_w)); the shift is the one of the odd (SW-MSA) blocks.
    """
    if not shrink:
        return (window_size, window_size), (window_size // 2, window_size // 2)
    window = (min(height, window_size), min(width, window_size))
    # min(n, w + 1) - min(n, w) is 1 when n > w and 0 otherwise
    shift = tuple((window_size // 2) * (min(n, window_size + 1) - min(n, window_size)) for n in (height, width))
    return window, shift


def shift_attention_mask(
    padded_size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """The SW-MSA mask of a padded, cyclically shifted map: 0 within a region, `MASK_VALUE` across regions.

    After the shift by `-shift`, the last window along each dimension holds tokens from up to three regions of the
    unshifted map (the interior, the last `window - shift` rows/columns before the wrap, and the wrapped `shift`
    ones); attention between different regions is masked.

    Args:
        padded_size: (Hp, Wp), multiples of the window.
        window: (window_h, window_w).
        shift: (shift_h, shift_w); 0 along a dimension means one region there.
        device: where to build the mask.

    Returns:
        A (num_windows, N, N) float mask with N = window_h * window_w, windows in row-major order.
    """
    regions = []
    for size, win, sft in zip(padded_size, window, shift, strict=True):
        index = torch.arange(size, device=device)
        # with no shift along a dimension it is one window there (size == win): every index gets region 1
        regions.append((index >= size - win).long() + (index >= size - sft).long())
    label = regions[0][:, None] * 3 + regions[1][None, :]  # (Hp, Wp)
    (hp, wp), (wh, ww) = padded_size, window
    label = label.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)  # (nW, N)
    different = label[:, :, None] != label[:, None, :]  # (nW, N, N)
    return torch.zeros(different.shape, device=device).masked_fill_(different, MASK_VALUE)


@dataclass(frozen=True)
class TokenOrder:
    """Index maps between the row-major tokens of a map and its windows, for one shift (the same for every image).

    Args:
        gather: (nW * N,) map token of every window slot, in window order; on a padded map, index 0 is a zero
            token prepended for the padded slots and map token i is at i + 1.
        scatter: (H*W,) window slot of every map token, in row-major map order.
    """

    gather: torch.Tensor
    scatter: torch.Tensor


@dataclass(frozen=True)
class WindowLayout:
    """How a stage's (H, W) map is cut into windows: padding to window multiples and the cyclic shift of the odd
    blocks folded into one gather (map -> windows) and one scatter (windows -> map) index each, so that padding,
    rolling, partitioning and their inverses cost one copy each way.

    Args:
        window: (window_h, window_w), from `stage_window`.
        window_area: N = window_h * window_w.
        padded: whether the map needs padding (then the gather reads a zero token at index 0).
        single_window: the unpadded map is one window and no block shifts it: gather and scatter are identities.
        plain: token order of the W-MSA blocks.
        shifted: token order of the SW-MSA blocks (the same as `plain` when the stage has no shift).
        shift_mask: (nW, N, N) region mask of the SW-MSA blocks, or None when the stage has no shift.
    """

    window: tuple[int, int]
    window_area: int
    padded: bool
    single_window: bool
    plain: TokenOrder
    shifted: TokenOrder
    shift_mask: torch.Tensor | None

    @staticmethod
    def build(height: int, width: int, window_size: int, device: torch.device, shrink: bool = True) -> WindowLayout:
        """The layout of a (height, width) map (`shrink`: see `stage_window`); built per forward, as it depends on
        the input size."""
        window, shift = stage_window(height, width, window_size, shrink)
        # (n + w - 1) // w: ceil division without negative operands, which an ONNX graph would round towards zero
        padded_h = (height + window[0] - 1) // window[0] * window[0]
        padded_w = (width + window[1] - 1) // window[1] * window[1]
        if torch.compiler.is_exporting():
            # symbolic sizes: no Python branch on them (it would freeze the graph to the example's case); the general
            # path (zero token, shifted order, region mask) gives the same result for every size
            plain = _token_order(height, width, (padded_h, padded_w), window, (0, 0), device, zero_token=True)
            shifted = _token_order(height, width, (padded_h, padded_w), window, shift, device, zero_token=True)
            mask = shift_attention_mask((padded_h, padded_w), window, shift, device)
            return WindowLayout(window, window[0] * window[1], True, False, plain, shifted, mask)
        padded = (padded_h, padded_w) != (height, width)
        plain = _token_order(height, width, (padded_h, padded_w), window, (0, 0), device, zero_token=padded)
        if not any(shift):
            single = window == (height, width)  # a dimension fits the window only when it is the window (clamped)
            return WindowLayout(window, window[0] * window[1], padded, single, plain, plain, None)
        shifted = _token_order(height, width, (padded_h, padded_w), window, shift, device, zero_token=padded)
        mask = shift_attention_mask((padded_h, padded_w), window, shift, device)
        return WindowLayout(window, window[0] * window[1], padded, False, plain, shifted, mask)


def _token_order(
    height: int,
    width: int,
    padded_size: tuple[int, int],
    window: tuple[int, int],
    shift: tuple[int, int],
    device: torch.device,
    zero_token: bool,
) -> TokenOrder:
    """Gather/scatter indices of pad (right/bottom) -> roll by -shift -> partition, as in the original.

    With `zero_token`, the gather reads a token sequence with a zero token prepended (padded slots read it).
    """
    (padded_h, padded_w), (wh, ww) = padded_size, window
    # slot (r, c) of the rolled padded map holds padded position ((r + shift_h) % Hp, (c + shift_w) % Wp)
    rows = _wrap(torch.arange(padded_h, device=device) + shift[0], padded_h)
    cols = _wrap(torch.arange(padded_w, device=device) + shift[1], padded_w)
    source = rows[:, None] * width + cols[None, :]
    if zero_token:
        # index 0 for the padded slots: a constant, unlike an appended token's H*W, exports cleanly
        source = (source + 1).masked_fill((rows[:, None] >= height) | (cols[None, :] >= width), 0)
    gather = source.view(padded_h // wh, wh, padded_w // ww, ww).permute(0, 2, 1, 3).reshape(-1)  # window order
    # map token (r, c) sits at rolled slot ((r - shift_h) % Hp, (c - shift_w) % Wp); its index in window order
    slot_r = _wrap(torch.arange(height, device=device) - shift[0], padded_h)
    slot_c = _wrap(torch.arange(width, device=device) - shift[1], padded_w)
    window_r, window_c = slot_r // wh, slot_c // ww
    window_index = window_r[:, None] * (padded_w // ww) + window_c[None, :]  # (H, W)
    inner_r, inner_c = slot_r - window_r * wh, slot_c - window_c * ww  # the remainders, written exportably
    scatter = window_index * (wh * ww) + (inner_r * ww)[:, None] + inner_c[None, :]
    return TokenOrder(gather=gather, scatter=scatter.flatten())


def _wrap(index: torch.Tensor, size: int) -> torch.Tensor:
    """`index % size` for indices in [-size, 2 * size): a remainder by a symbolic size does not export to ONNX."""
    return torch.where(index < 0, index + size, torch.where(index >= size, index - size, index))


class PatchEmbed(nn.Module):
    """4x4 stride-4 conv on the image padded right/bottom to a multiple of 4, then LayerNorm; channels-last out."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ceil-division form: exported size expressions stay small (no modulo, no negative floor division)
        size = self.patch_size
        pad_h = (x.shape[-2] + size - 1) // size * size - x.shape[-2]
        pad_w = (x.shape[-1] + size - 1) // size * size - x.shape[-1]
        if torch.compiler.is_exporting() or pad_h or pad_w:  # no branch on symbolic sizes
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, C, H, W) -> (B, H, W, C)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    Args:
        dim: token channels.
        num_heads: attention heads.
        window_size: side of the full square window; the bias table covers its `(2w - 1)^2` offsets.
        qkv_bias: bias on the fused query/key/value projection.
        attn_drop: dropout on attention weights.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # derived from the window size alone, so it stays out of checkpoints
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def position_bias(self, window: tuple[int, int]) -> torch.Tensor:
        """The (heads, N, N) bias of a (window_h, window_w) window, N = window_h * window_w.

        A window smaller than the full one takes the index rows and columns of its tokens in the full window: token
        offsets, and so table rows, are the same.
        """
        index = self.relative_position_index
        if torch.compiler.is_exporting() or window != (self.window_size, self.window_size):
            rows = torch.arange(window[0], device=index.device)[:, None] * self.window_size
            keep = (rows + torch.arange(window[1], device=index.device)).flatten()
            index = index[keep][:, keep]
        return self.relative_position_bias_table[index].permute(2, 0, 1)  # (N, N, heads) -> (heads, N, N)

    def forward(
        self, x: torch.Tensor, layout: WindowLayout, order: TokenOrder, attn_mask: torch.Tensor
    ) -> torch.Tensor:
        """Window attention over the (B, H*W, C) tokens of a map, returned in map order.

        The projections run on the map's own tokens only: `qkv` before the gather (a padded slot reads one extra zero
        token, whose projection is the bias, as a zero-padded token's is in the original) and `proj` after the
        scatter, which drops the padded slots.

        Args:
            x: (B, H*W, C) normalised tokens, row-major.
            layout: the stage's windows.
            order: the gather/scatter of this block (plain or shifted).
            attn_mask: additive float mask broadcastable to (B * nW, heads, N, N).
        """
        batch, _, dim = x.shape
        head_dim = dim // self.num_heads
        if layout.padded:
            # project first: the padded slots are not worth their GEMM rows; then gather 3C channels
            qkv = self.qkv(F.pad(x, (0, 0, 1, 0))).index_select(1, order.gather)  # zero token first
        elif layout.single_window:
            qkv = self.qkv(x)  # the map is its one window, in order
        else:
            qkv = self.qkv(x.index_select(1, order.gather))  # nothing padded: gather the narrower C channels
        qkv = qkv.view(-1, layout.window_area, 3, self.num_heads, head_dim)  # (B * nW, N, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B * nW, heads, N, d)
        # the mask follows q's dtype, which autocast may have lowered
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype),
                                             dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2)  # (B * nW, N, heads, d)
        if torch.compiler.is_exporting():
            # the export's decomposition cannot prove that the symbolic strides of this view allow merging
            out = out.clone(memory_format=torch.contiguous_format)
        out = out.reshape(batch, -1, dim)  # (B, nW * N, C)
        if not layout.single_window:
            out = out.index_select(1, order.scatter)  # (B, H*W, C), map order, padded slots dropped
        return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
    """Pre-norm block: (shifted-)window attention and MLP, each with a residual and stochastic depth.

    Args:
        dim: token channels.
        num_heads: attention heads.
        window_size: side of the full window.
        shifted: SW-MSA (cyclic shift and region mask) instead of W-MSA.
        mlp_ratio: MLP hidden width relative to `dim`.
        qkv_bias: bias on the query/key/value projection.
        drop: dropout after projections and in the MLP.
        attn_drop: dropout on attention weights.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shifted: bool,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """Args:
            x: (B, H, W, C) tokens.
            layout: the stage's windows for this map size (`WindowLayout.build`).
        """
        batch, height, width, channels = x.shape
        order = layout.shifted if self.shifted else layout.plain
        bias = self.attn.position_bias(layout.window)  # (heads, N, N)
        if self.shifted and layout.shift_mask is not None:
            mask = bias.unsqueeze(0) + layout.shift_mask.unsqueeze(1)  # (nW, heads, N, N)
            mask = mask.unsqueeze(0).expand(batch, -1, -1, -1, -1).flatten(0, 1)  # (B * nW, ...), a view at B = 1
        else:
            mask = bias.unsqueeze(0)  # (1, heads, N, N), the same for every window
        y = self.attn(self.norm1(x).view(batch, height * width, channels), layout, order, mask)
        y = y.view(batch, height, width, channels)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (order (0,0), (1,0), (0,1), (1,1) as (row, col)), LayerNorm, Linear 4C -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        pad_h, pad_w = (height + 1) // 2 * 2 - height, (width + 1) // 2 * 2 - width  # no modulo: small exported sizes
        if torch.compiler.is_exporting() or pad_h or pad_w:  # no branch on symbolic sizes
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
            height, width = height + pad_h, width + pad_w
        x = x.view(batch, height // 2, 2, width // 2, 2, channels)  # (B, H/2, row, W/2, col, C)
        # column offset outer, row offset inner: the original x0, x1, x2, x3 order
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(batch, height // 2, width // 2, 4 * channels)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks at one resolution, then (stages 0-2) patch merging.

    Args:
        blocks: the stage's blocks, W-MSA and SW-MSA alternating.
        window_size: side of the full window.
        downsample: patch merging after the blocks, or None for the last stage.
        shrink_window: shrink the window to a smaller map (see `stage_window`).
    """

    def __init__(
        self, blocks: list[SwinBlock], window_size: int, downsample: PatchMerging | None, shrink_window: bool = True
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shrink_window = shrink_window
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, H, W, C) -> (the stage output before merging, the merged map for the next stage or None)."""
        # one layout per forward and stage, shared by its blocks
        layout = WindowLayout.build(x.shape[1], x.shape[2], self.window_size, x.device, self.shrink_window)
        for block in self.blocks:
            x = block(x, layout)
        return x, (self.downsample(x) if self.downsample is not None else None)


class SwinTransformer(nn.Module):
    """Swin Transformer backbone: four stages at strides 4, 8, 16, 32 with widths C, 2C, 4C, 8C.

    Args:
        config: the variant's hyper-parameters.
        in_channels: input image channels.
        drop_path_rate: final stochastic-depth rate of the linear schedule over all blocks.
        drop_rate: dropout after projections and in the MLPs.
        attn_drop_rate: dropout on attention weights.
        qkv_bias: bias on the query/key/value projections (True in every released model).
        out_indices: which stages to return; stages after the last one listed are not run.
        window_size: overrides `config.window_size` (12 for the 384-pretrained models).
        shrink_window: a stage whose map is no larger than the window along a dimension uses the map size there and
            no shift (classification code, timm, transformers); False keeps the full window and shift and pads (the
            segmentation code and mmseg).
    """

    def __init__(
        self,
        config: SwinConfig,
        in_channels: int = 3,
        drop_path_rate: float = 0.3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        qkv_bias: bool = True,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        window_size: int | None = None,
        shrink_window: bool = True,
    ) -> None:
        super().__init__()
        num_stages = len(config.depths)
        if len(config.num_heads) != num_stages:
            raise ValueError(f"SwinConfig has {num_stages} depths but {len(config.num_heads)} num_heads")
        if not out_indices or any(i not in range(num_stages) for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of 0..{num_stages - 1}, got {out_indices}")
        self.out_indices = tuple(out_indices)
        self.window_size = config.window_size if window_size is None else window_size
        self.patch_embed = PatchEmbed(in_channels, config.embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, config.depths)
        stages, infos = [], []
        for i, depth in enumerate(config.depths):
            dim = config.embed_dim * 2**i
            blocks = [
                SwinBlock(dim, config.num_heads[i], self.window_size, shifted=j % 2 == 1, mlp_ratio=config.mlp_ratio,
                          qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate, drop_path=rates[i][j])
                for j in range(depth)
            ]
            downsample = PatchMerging(dim) if i < num_stages - 1 else None
            stages.append(SwinStage(blocks, self.window_size, downsample, shrink_window))
            infos.append(FeatureInfo(channels=dim, stride=4 * 2**i))
        self.stages = nn.ModuleList(stages)
        # the per-stage output norms of the segmentation ports (`norm{i}` there), for the returned stages only
        self.out_norms = nn.ModuleDict({str(i): nn.LayerNorm(infos[i].channels) for i in self.out_indices})
        self.feature_info = [infos[i] for i in self.out_indices]
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_channels, H, W) -> one (B, C_i, ceil(H / s_i), ceil(W / s_i)) map per `out_indices`, each after its
        output LayerNorm (channels-last memory, NCHW shape)."""
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        for i, stage in enumerate(self.stages[: max(self.out_indices) + 1]):
            out, x = stage(x)
            if i in self.out_indices:
                outs.append(self.out_norms[str(i)](out).permute(0, 3, 1, 2))  # (B, H, W, C) -> (B, C, H, W)
        return outs


def _init_weights(module: nn.Module) -> None:
    """The original initialisation: truncated normal (std 0.02) for linears and bias tables, unit LayerNorms."""
    init_weights(module, conv_fan_out=False)
    if isinstance(module, WindowAttention):
        nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)
