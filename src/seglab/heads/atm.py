"""SegViT's Attention-to-Mask (ATM) decoders: `ATMHead`, and `TPNATMHead` with `ATMSingleHead` (Shrunk structure).

Paper: "SegViT: Semantic Segmentation with Plain Vision Transformers", Zhang et al., NeurIPS 2022, arXiv:2210.05844.
Original code: zbwxp/SegVit (`decode_heads/atm_head.py`, `atm_single_head.py`, `tpn_atm_head.py`).

Written for seglab from the paper and the facts of that code:

- One learnable query per class goes through post-norm transformer decoder layers (self-attention, cross-attention
  to the projected ViT tokens, ReLU FFN of 4x the width, dropout 0.1). The cross-attention's pre-softmax similarity
  `q k^T * head_dim^-0.5`, averaged over the heads, is the query's mask logit map; the query itself is classified
  over `num_classes + 1` (the last column is "no object").
- `ATMHead` runs one 3-layer decoder per backbone output, deepest first, carrying the queries from stage to stage;
  each stage's mask is the last layer's similarity, and masks add up across stages (bilinear to the last stage's
  size). Every stage yields a (class logits, mask) pair; the last is the prediction, the others deep supervision.
- `TPNATMHead` (query-based upsampling, "QU"): a grid of learnable queries, `(img_size / 16)^2`, goes through standard
  decoders over the backbone outputs (shallow first, not reversed) and is reshaped into a stride-16 map, which
  `ATMSingleHead` decodes with one decoder whose every layer yields a (class logits, mask) pair (masks not summed).
- Semantic scores: `softmax(class)[..., :K]` contracted with `sigmoid(mask)` over the queries, the masks upsampled
  to the image first (`semantic_scores`, `upsample_masks`).

What we changed: the heads return tensors only, `(class_logits (L, B, Q, K + 1), masks (L, B, Q, h, w))` for the
L decoder outputs; upsampling to the image and the semantic scores are the model's (`seglab.models.segvit`), the set
loss is `seglab.losses.atm.ATMLoss`. Token maps keep their real (h, w), so any input size and aspect ratio works (the
original assumes square maps and fixed `img_size` crops). Masks are upsampled to the zero-padded input (the ViT pads
right/bottom to a multiple of the patch) and cropped to the image, which equals the original's resize whenever the
input is a multiple of the patch. For `TPNATMHead` at another grid than the trained one, see `query_mode`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import resize
from seglab.layers.init import init_weights

QUERY_MODES = ("resample", "fixed")


class SimilarityAttention(nn.Module):
    """Multi-head cross-attention that also returns its pre-softmax similarity averaged over the heads.

    Separate `q`, `k`, `v` projections (with bias), softmax attention with dropout on the weights, output `proj`.

    Args:
        dim: channels of queries and keys (C).
        num_heads: attention heads; C must be divisible by it.
        attn_drop: dropout on the attention weights (0.1 in SegViT).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.reshape(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)  # (B, heads, N, d)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Nq, C) queries attend to (B, Nk, C) tokens -> ((B, Nq, C) output, (B, Nq, Nk) similarity)."""
        batch, num_queries, dim = query.shape
        q, k, v = self._heads(self.q(query)), self._heads(self.k(memory)), self._heads(self.v(memory))
        logits = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, Nq, Nk)
        similarity = logits.mean(dim=1)  # the mask: pre-softmax, before dropout, averaged over heads
        attn = self.attn_drop(logits.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(batch, num_queries, dim)  # (B, heads, Nq, d) -> (B, Nq, C)
        return self.proj(out), similarity


class ATMDecoderLayer(nn.Module):
    """Post-norm decoder layer whose cross-attention is a `SimilarityAttention` (the original `TPN_DecoderLayer`).

    `x = norm1(x + self_attn(x))`, `x = norm2(x + cross_attn(x, memory))`, `x = norm3(x + ffn(x))`, ReLU FFN, dropout
    on every residual branch. Parameter names follow `torch.nn.TransformerDecoderLayer` (`self_attn.in_proj_weight`,
    ..., `linear1`, `linear2`, `norm1..3`) with `multihead_attn.{q,k,v,proj}`, as in the official checkpoints.

    Args:
        dim: query and token channels.
        num_heads: attention heads.
        ffn_dim: hidden width of the FFN (4 * dim in SegViT).
        dropout: dropout of the attention weights, the residual branches and the FFN.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        # NOTE: sequence-first, as the original: a batch-first nn.MultiheadAttention takes PyTorch's fused inference
        # kernel, which FLOP counters (seglab.tools.flops, fvcore) do not see
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout)
        self.multihead_attn = SimilarityAttention(dim, num_heads, attn_drop=dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Nq, C) queries and (B, Nk, C) tokens -> ((B, Nq, C) queries, (B, Nq, Nk) similarity)."""
        seq = x.transpose(0, 1)  # (B, Nq, C) -> (Nq, B, C)
        x = self.norm1(x + self.dropout1(self.self_attn(seq, seq, seq, need_weights=False)[0].transpose(0, 1)))
        attended, similarity = self.multihead_attn(x, memory)
        x = self.norm2(x + self.dropout2(attended))
        x = self.norm3(x + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x, similarity


class ATMDecoder(nn.Module):
    """A stack of `ATMDecoderLayer`s (no final norm); returns every layer's queries and similarity.

    Args:
        dim: query and token channels.
        num_heads: attention heads.
        num_layers: decoder layers.
        dropout: see `ATMDecoderLayer`.
    """

    def __init__(self, dim: int, num_heads: int, num_layers: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ATMDecoderLayer(dim, num_heads, 4 * dim, dropout) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        queries, similarities = [], []
        for layer in self.layers:
            x, similarity = layer(x, memory)
            queries.append(x)
            similarities.append(similarity)
        return queries, similarities


class QueryDecoder(nn.Module):
    """A stack of standard post-norm `nn.TransformerDecoderLayer`s (ReLU, FFN 4 * dim, no final norm), the
    `nn.TransformerDecoder` of `TPNATMHead` with independently initialised layers.

    Args:
        dim: query and token channels.
        num_heads: attention heads.
        num_layers: decoder layers.
        dropout: dropout of the attention weights, the residual branches and the FFN.
    """

    def __init__(self, dim: int, num_heads: int, num_layers: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(dim, num_heads, 4 * dim, dropout=dropout) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """(B, Nq, C) queries and (B, Nk, C) tokens -> (B, Nq, C) queries."""
        # sequence-first layers (see ATMDecoderLayer): (B, N, C) -> (N, B, C)
        x, memory = x.transpose(0, 1), memory.transpose(0, 1)
        for layer in self.layers:
            x = layer(x, memory)
        return x.transpose(0, 1)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)


def _projection(in_channels: int, dim: int, use_proj: bool) -> tuple[nn.Module, nn.Module]:
    if use_proj:
        return nn.Linear(in_channels, dim), nn.LayerNorm(dim)
    if in_channels != dim:
        raise ValueError(f"use_proj=False needs inputs of embed_dim={dim} channels, got {in_channels}")
    return nn.Identity(), nn.Identity()


class ATMHead(nn.Module):
    """SegViT's ATM decode head: one ATM decoder per backbone output, deepest first, cumulative masks.

    Modules per stage i = 1..S (stage 1 reads the deepest output): `input_proj_i` (Linear) and `proj_norm_i`
    (LayerNorm), or identities without `use_proj`; `decoder_i` (an `ATMDecoder`). Shared: the class queries `q`
    (`nn.Embedding(num_classes, embed_dim)`) and `class_embed` (Linear to `num_classes + 1`).

    Args:
        in_channels: channels of the backbone outputs, shallow to deep (all of them are used).
        num_classes: classes (K); one query per class.
        embed_dim: decoder width (ViT channels // 2 in SegViT: 384 for ViT-B, 512 for ViT-L).
        num_heads: attention heads (12 for ViT-B, 16 for ViT-L).
        num_layers: decoder layers per stage.
        dropout: decoder dropout.
        use_proj: project and normalise the tokens; without it the backbone width must be `embed_dim`.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        embed_dim: int,
        num_heads: int,
        num_layers: int = 3,
        dropout: float = 0.1,
        use_proj: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_stages = len(in_channels)
        for i, channels in enumerate(reversed(list(in_channels))):
            proj, norm = _projection(channels, embed_dim, use_proj)
            self.add_module(f"input_proj_{i + 1}", proj)
            self.add_module(f"proj_norm_{i + 1}", norm)
            self.add_module(f"decoder_{i + 1}", ATMDecoder(embed_dim, num_heads, num_layers, dropout))
        self.q = nn.Embedding(num_classes, embed_dim)
        self.class_embed = nn.Linear(embed_dim, num_classes + 1)
        self.apply(_init_weights)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone maps (B, C_i, h_i, w_i), shallow to deep -> (class logits (S, B, K, K + 1), cumulative masks
        (S, B, K, h, w)) per stage, deepest stage first; (h, w) is the size of the shallowest map."""
        if len(features) != self.num_stages:
            raise ValueError(f"ATMHead was built for {self.num_stages} backbone outputs, got {len(features)}")
        batch = features[0].shape[0]
        q = self.q.weight.unsqueeze(0).repeat(batch, 1, 1)  # (B, K, D)
        logits, similarities = [], []
        for i, x in enumerate(reversed(features)):
            height, width = x.shape[-2:]
            memory = getattr(self, f"proj_norm_{i + 1}")(getattr(self, f"input_proj_{i + 1}")(_tokens(x)))
            queries, sims = getattr(self, f"decoder_{i + 1}")(q, memory)
            q = queries[-1]
            logits.append(self.class_embed(q))
            similarities.append(sims[-1].reshape(batch, -1, height, width))  # (B, K, h*w) -> (B, K, h, w)
        size = similarities[-1].shape[-2:]
        masks, total = [], None
        for similarity in similarities:
            similarity = resize(similarity, size)
            total = similarity if total is None else total + similarity
            masks.append(total)
        return torch.stack(logits), torch.stack(masks)


class ATMSingleHead(nn.Module):
    """ATM decoding of one feature map in which every decoder layer yields a prediction (masks not summed).

    The form `TPNATMHead` uses (the original `ATMSingleHead` with `use_stages=1`): `input_proj_1` / `proj_norm_1`
    (identities without `use_proj`), `decoder_1` (an `ATMDecoder`), class queries `q`, `class_embed`.

    Args:
        in_channels: channels of the input map.
        num_classes: classes (K); one query per class.
        embed_dim: decoder width.
        num_heads: attention heads.
        num_layers: decoder layers, one prediction each.
        dropout: decoder dropout.
        use_proj: project and normalise the tokens (False in `TPNATMHead`).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        embed_dim: int,
        num_heads: int,
        num_layers: int = 3,
        dropout: float = 0.1,
        use_proj: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_proj_1, self.proj_norm_1 = _projection(in_channels, embed_dim, use_proj)
        self.decoder_1 = ATMDecoder(embed_dim, num_heads, num_layers, dropout)
        self.q = nn.Embedding(num_classes, embed_dim)
        self.class_embed = nn.Linear(embed_dim, num_classes + 1)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> (class logits (L, B, K, K + 1), masks (L, B, K, h, w)), one pair per decoder layer."""
        batch, _, height, width = x.shape
        memory = self.proj_norm_1(self.input_proj_1(_tokens(x)))
        queries, similarities = self.decoder_1(self.q.weight.unsqueeze(0).repeat(batch, 1, 1), memory)
        logits = self.class_embed(torch.stack(queries))  # (L, B, K, K + 1)
        masks = torch.stack(similarities).unflatten(-1, (height, width))  # (L, B, K, h*w) -> (L, B, K, h, w)
        return logits, masks


class TPNATMHead(nn.Module):
    """SegViT Shrunk's head: query-based upsampling (QU) to a stride-16 map, then `ATMSingleHead`.

    A grid of learnable queries `q` (`nn.Embedding(gh * gw, embed_dim)`, the training crop's stride-16 grid) goes
    through one `QueryDecoder` per backbone output, shallow to deep (not reversed), each over its projected tokens
    (`input_proj_i`, `proj_norm_i`, `decoder_i`); the queries are then the (embed_dim, gh, gw) map that `atm` decodes.

    Inputs whose first map is not (gh, gw) (another crop size or aspect ratio): with `query_mode="resample"` the query
    grid is resampled bilinearly (`align_corners=False`) to the map's grid, like a position embedding, so the output
    stays at stride 16 of that input (the identity at the trained grid); with `"fixed"` the trained grid is used as is
    and stretched over the image, as the original code does (it has no other grid).

    Args:
        in_channels: channels of the backbone outputs, shallow to deep; the first must be at stride 16.
        num_classes: classes (K).
        embed_dim: decoder width (512 for ViT-L).
        num_heads: attention heads.
        query_grid: (gh, gw), the trained grid of upsampling queries: img_size / 16 per side (40 x 40 at 640).
        num_layers: decoder layers of every QU stage and of `atm`.
        dropout: decoder dropout.
        query_mode: "resample" or "fixed", see above.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        embed_dim: int,
        num_heads: int,
        query_grid: tuple[int, int],
        num_layers: int = 3,
        dropout: float = 0.1,
        query_mode: str = "resample",
    ) -> None:
        super().__init__()
        if query_mode not in QUERY_MODES:
            raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
        self.num_classes = num_classes
        self.num_stages = len(in_channels)
        self.query_grid = (int(query_grid[0]), int(query_grid[1]))
        self.query_mode = query_mode
        for i, channels in enumerate(in_channels):
            self.add_module(f"input_proj_{i + 1}", nn.Linear(channels, embed_dim))
            self.add_module(f"proj_norm_{i + 1}", nn.LayerNorm(embed_dim))
            self.add_module(f"decoder_{i + 1}", QueryDecoder(embed_dim, num_heads, num_layers, dropout))
        self.q = nn.Embedding(self.query_grid[0] * self.query_grid[1], embed_dim)
        self.apply(_init_weights)
        self.atm = ATMSingleHead(embed_dim, num_classes, embed_dim, num_heads, num_layers, dropout, use_proj=False)

    def upsampling_queries(self, grid: tuple[int, int]) -> torch.Tensor:
        """The (gh' * gw', D) upsampling queries for an output grid (gh', gw'), resampled from the trained grid when it
        differs (always while exporting, where sizes are symbolic; resampling to the same grid is the identity)."""
        if not torch.compiler.is_exporting() and tuple(grid) == self.query_grid:
            return self.q.weight
        dim = self.q.weight.shape[1]
        trained = self.q.weight.T.reshape(1, dim, *self.query_grid)  # (gh*gw, D) -> (1, D, gh, gw)
        resampled = F.interpolate(trained, size=tuple(grid), mode="bilinear", align_corners=False)
        return resampled.flatten(2)[0].T  # (1, D, gh', gw') -> (gh'*gw', D)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone maps, shallow to deep -> (class logits (L, B, K, K + 1), masks (L, B, K, gh', gw')) of `atm`,
        (gh', gw') the first map's grid (`"resample"`) or the trained grid (`"fixed"`)."""
        if len(features) != self.num_stages:
            raise ValueError(f"TPNATMHead was built for {self.num_stages} backbone outputs, got {len(features)}")
        batch = features[0].shape[0]
        grid = tuple(features[0].shape[-2:]) if self.query_mode == "resample" else self.query_grid
        q = self.upsampling_queries(grid).unsqueeze(0).repeat(batch, 1, 1)  # (B, gh'*gw', D)
        for i, x in enumerate(features):  # NOTE: shallow first, unlike ATMHead
            memory = getattr(self, f"proj_norm_{i + 1}")(getattr(self, f"input_proj_{i + 1}")(_tokens(x)))
            q = getattr(self, f"decoder_{i + 1}")(q, memory)
        upsampled = q.transpose(1, 2).unflatten(-1, grid)  # (B, gh'*gw', D) -> (B, D, gh', gw')
        return self.atm(upsampled)


def _init_weights(module: nn.Module) -> None:
    """The official `init_weights`: truncated normal (std 0.02) linears, attention output projections included, with
    zero biases, unit LayerNorms; fused self-attention input projections and the query embeddings keep PyTorch's
    defaults (Xavier uniform, standard normal)."""
    init_weights(module, conv_fan_out=False)


def upsample_masks(masks: torch.Tensor, size: tuple[int, int] | torch.Size, patch_size: int) -> torch.Tensor:
    """Mask logits (..., h, w) of an input of `size` (H, W) -> (..., H, W).

    The maps cover the input zero-padded right/bottom to a multiple of `patch_size`; they are upsampled bilinearly
    (`align_corners=False`) to that padded size and cropped to the image, which is the original's plain resize when
    H and W are multiples of the patch.

    Args:
        masks: mask logits with the map in the last two dimensions.
        size: (H, W) of the image (or of the labels, which share its size).
        patch_size: the backbone's padding multiple.
    """
    height, width = size[0], size[1]
    padded = ((height + patch_size - 1) // patch_size * patch_size, (width + patch_size - 1) // patch_size * patch_size)
    lead = masks.shape[:-2]
    flat = masks if masks.ndim == 4 else masks.flatten(0, -3).unsqueeze(1)  # interpolate needs (N, C, h, w)
    up = F.interpolate(flat, size=padded, mode="bilinear", align_corners=False)[..., :height, :width]
    return up.reshape(*lead, height, width)


def semantic_scores(class_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """SegViT's semantic inference: `sum_q softmax(class_logits)[b, q, c] * sigmoid(masks)[b, q, h, w]`.

    Args:
        class_logits: (B, Q, K + 1), the last column "no object" (dropped after the softmax).
        masks: (B, Q, H, W) mask logits, already at the output size.

    Returns:
        (B, K, H, W) scores in [0, Q].
    """
    probs = class_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, masks.sigmoid())
