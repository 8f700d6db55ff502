"""The same model in a peer library, with the same weights: what `seglab bench --compare` times against.

A peer is built with random weights in its own library, converted to seglab keys with seglab's own converter
(`seglab.convert`, source `hf`) and loaded strictly into the seglab model, so both compute the same function and the
benchmark reports their output difference next to the speed ratio. Both sides are timed doing the same work: when
the peer's forward returns logits at the input size (transformers' UperNet), seglab's side includes that resize.

Peers, when installed: Hugging Face transformers for SegFormer-B0..B5 (`SegformerForSemanticSegmentation`),
UperNet-Swin-T..L (`UperNetForSemanticSegmentation`) and MaskFormer-Swin-T..L / R50 / R101
(`MaskFormerForInstanceSegmentation`, semantic scores as transformers' post-processing computes them). timm has
backbones only, no segmentation models; mmsegmentation does not install next to this torch (the tests run it in a
side environment, `tests/reference/mmseg_env.py`), so its figures come from `benchmarks/`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seglab.convert import convert_checkpoint
from seglab.registry import create_model


@dataclass
class Peer:
    """A peer library's model with the seglab model's weights, and how to get comparable logits from each."""

    library: str
    version: str
    peer: nn.Module
    ours: nn.Module
    run_peer: Callable[[torch.Tensor], torch.Tensor]
    run_ours: Callable[[torch.Tensor], torch.Tensor]


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise LookupError("the peer library transformers is not installed (pip install transformers)") from exc
    return transformers


def _load_ours(peer: nn.Module, name: str) -> nn.Module:
    result = convert_checkpoint(peer.state_dict(), "hf", name)
    ours = create_model(name, num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)
    return ours


def _segformer(name: str, num_classes: int) -> Peer:
    from seglab.backbones.mit import MIT_CONFIGS
    from seglab.models.segformer import SEGFORMER_VARIANTS

    tf = _transformers()
    variant = name.removeprefix("segformer_")
    mit = MIT_CONFIGS[variant]
    config = tf.SegformerConfig(
        num_labels=num_classes, hidden_sizes=list(mit.embed_dims), depths=list(mit.depths),
        num_attention_heads=list(mit.num_heads), sr_ratios=list(mit.sr_ratios),
        decoder_hidden_size=SEGFORMER_VARIANTS[variant].head_channels,
    )
    peer = tf.SegformerForSemanticSegmentation(config).eval()
    ours = _load_ours(peer, name)
    return Peer("transformers", tf.__version__, peer, ours, lambda x: peer(pixel_values=x).logits, ours)


def _swin_config(tf, variant: str, window: int):
    from seglab.backbones.swin import SWIN_CONFIGS

    swin = SWIN_CONFIGS[variant]
    return tf.SwinConfig(embed_dim=swin.embed_dim, depths=list(swin.depths), num_heads=list(swin.num_heads),
                         window_size=window, out_features=["stage1", "stage2", "stage3", "stage4"])


def _upernet_swin(name: str, num_classes: int) -> Peer:
    tf = _transformers()
    config = tf.UperNetConfig(backbone_config=_swin_config(tf, name.removeprefix("upernet_swin_"), 7),
                              num_labels=num_classes)
    peer = tf.UperNetForSemanticSegmentation(config).eval()
    ours = _load_ours(peer, name)

    def run_ours(x: torch.Tensor) -> torch.Tensor:  # transformers returns logits at the input size
        return F.interpolate(ours(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    return Peer("transformers", tf.__version__, peer, ours, lambda x: peer(pixel_values=x).logits, run_ours)


def _maskformer(name: str, num_classes: int) -> Peer:
    from seglab.models.maskformer import MASKFORMER_SWIN_VARIANTS

    tf = _transformers()
    backbone = name.removeprefix("maskformer_")
    if backbone.startswith("swin_"):
        variant = backbone.removeprefix("swin_")
        backbone_config = _swin_config(tf, variant, MASKFORMER_SWIN_VARIANTS[variant].window)
    else:
        depths = {"r50": [3, 4, 6, 3], "r101": [3, 4, 23, 3]}[backbone]
        backbone_config = tf.ResNetConfig(depths=depths, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = tf.MaskFormerConfig(backbone_config=backbone_config, num_labels=num_classes, use_auxiliary_loss=False)
    peer = tf.MaskFormerForInstanceSegmentation(config).eval()
    ours = _load_ours(peer, name)

    def run_peer(x: torch.Tensor) -> torch.Tensor:
        # transformers' post_process_semantic_segmentation before its resize: class probabilities without the
        # no-object class times the mask probabilities, summed over the queries
        out = peer(pixel_values=x)
        classes = out.class_queries_logits.softmax(-1)[..., :-1]
        return torch.einsum("bqc,bqhw->bchw", classes, out.masks_queries_logits.sigmoid())

    return Peer("transformers", tf.__version__, peer, ours, run_peer, ours)


PEERS: list[tuple[str, Callable[[str, int], Peer]]] = [
    (r"segformer_b[0-5]", _segformer),
    (r"upernet_swin_[tsbl]", _upernet_swin),
    (r"maskformer_(swin_[tsbl]|r50|r101)", _maskformer),
]


def build_peer(name: str, num_classes: int = 150) -> Peer:
    """The peer of registered model `name` with the same (random) weights; LookupError when none is known or its
    library is missing, naming what is known."""
    for pattern, builder in PEERS:
        if re.fullmatch(pattern, name):
            torch.manual_seed(0)
            return builder(name, num_classes)
    known = ", ".join(p for p, _ in PEERS)
    raise LookupError(f"no peer implementation of {name} is known (peers exist for {known}; the other families are "
                      f"compared against mmsegmentation and the official code in benchmarks/)")
