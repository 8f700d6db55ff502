"""Foreign checkpoints -> seglab state dicts: `convert_checkpoint(src, source, model_name)`.

One module per model family, holding every source layout of that family. SegFormer: `segformer` (official NVlabs code,
mmseg and transformers); SegNeXt: `segnext` (official Visual-Attention-Network code and mmseg 1.x, whose NMF rank it
sets); HRNet: `hrnet` (official HRNet-Semantic-Segmentation checkpoints and mmseg's FCN-HRNet); UperNet-Swin: `upernet`
(transformers, and the official Swin-Transformer-Semantic-Segmentation / mmseg layouts through `swin`); UperNet-AS-MLP:
`upernet` (the AS-MLP-Semantic-Segmentation repository, and ImageNet AS-MLP checkpoints through `asmlp`); Semantic-FPN
CycleMLP: `cyclemlp` (ImageNet CycleMLP checkpoints, backbone only: no official segmentation model exists); plain ViT:
`setr` (official SETR and mmseg), `segvit` (official SegViT), `segmenter` (official Segmenter and mmseg), with the ViT
encoder layouts (timm, mmseg, JAX `.npz`) in `vit`; MaskFormer: `maskformer` (transformers and the official detectron2
layout); BPR refinement networks: `bpr` (official chenhang98/BPR checkpoints, for `seglab.instance.build_bpr`). Each
converter consumes every source key or lists it as dropped, and its result loads `strict=True` into
`create_model(model_name, num_classes=result.num_classes, **result.overrides)`. A source without decode-head keys (an
ImageNet-pretrained encoder such as `mit_b0.pth`, `mscan_t.pth` or `nvidia/mit-b0`) converts to `backbone.*` keys only
(`result.backbone_only`), for a training recipe's `model.pretrained`.

ImageNet backbones of the ViT and MaskFormer families: `official` takes a timm ViT (`jx_vit_large_p16_384`,
`vit_base_patch16_384`, ...) for `setr_*`, `segmenter_vit_*` and `segvit_*` (SegViT also takes mmseg's ViT, the file
its configs load), `mmseg` an mmseg ViT for `setr_*` and `segmenter_vit_*`, and both a JAX / AugReg ViT `.npz`
(read with `numpy.load(allow_pickle=False)`, recognised by its `embedding/kernel` array). The position embedding is
resampled to the model's grid; `img_size` chooses that grid (768 for the Cityscapes recipes, 480 for Pascal
Context) and becomes the result's `img_size` override. For `maskformer_*`, `official` also takes a torchvision
ResNet-50/101 state dict or an official Swin ImageNet checkpoint (recognised by having no `sem_seg_head.*` key).

Sources `timm` and `torchvision` name ImageNet classifiers in those libraries' layouts (the `timm/<name>` Hub files,
`download.pytorch.org` state dicts) and always convert to backbone-only weights: `timm` takes a ViT for `setr_*`,
`segvit_*` (as `official` does) and `segmenter_vit_*` (`convert_segmenter_timm`: mmseg's numerics, the same result as
mmseg's converted `vit_*_p16_384` file), a Swin for `upernet_swin_*` and `maskformer_swin_*`, and an HRNet
(HRNet-Image-Classification names) for `fcn_hrnetv2_*` (timm's nearest fuse upsampling as an override);
`torchvision` takes a ResNet-50/101 for `maskformer_r50` / `maskformer_r101`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from seglab.convert.bpr import convert_bpr_official
from seglab.convert.common import ConversionResult, read_source
from seglab.convert.cyclemlp import convert_cyclemlp_official
from seglab.convert.hrnet import convert_hrnet_mmseg, convert_hrnet_official, convert_hrnet_timm_backbone
from seglab.convert.mask_rcnn import convert_mask_rcnn_torchvision
from seglab.convert.maskformer import convert_maskformer_hf, convert_maskformer_official
from seglab.convert.segformer import convert_segformer_hf, convert_segformer_mmseg, convert_segformer_official
from seglab.convert.segmenter import convert_segmenter_mmseg, convert_segmenter_official, convert_segmenter_timm
from seglab.convert.segnext import convert_segnext_mmseg, convert_segnext_official
from seglab.convert.segvit import convert_segvit_official
from seglab.convert.setr import convert_setr_mmseg, convert_setr_official
from seglab.convert.upernet import convert_upernet_asmlp, convert_upernet_swin_hf, convert_upernet_swin_mmseg

Converter = Callable[[dict[str, torch.Tensor], str, str], ConversionResult]

# source -> model-name prefix -> converter
CONVERTERS: dict[str, dict[str, Converter]] = {
    "hf": {"segformer_": convert_segformer_hf, "upernet_swin_": convert_upernet_swin_hf,
           "maskformer_": convert_maskformer_hf},
    "official": {"segformer_": convert_segformer_official, "segnext_": convert_segnext_official,
                 "fcn_hrnetv2_": convert_hrnet_official, "upernet_swin_": convert_upernet_swin_mmseg,
                 "upernet_asmlp_": convert_upernet_asmlp, "fpn_cyclemlp_": convert_cyclemlp_official,
                 "setr_": convert_setr_official, "segvit_": convert_segvit_official,
                 "segmenter_vit_": convert_segmenter_official, "maskformer_": convert_maskformer_official,
                 "bpr_": convert_bpr_official},
    "mmseg": {"segformer_": convert_segformer_mmseg, "segnext_": convert_segnext_mmseg,
              "fcn_hrnetv2_": convert_hrnet_mmseg, "upernet_swin_": convert_upernet_swin_mmseg,
              "setr_": convert_setr_mmseg, "segmenter_vit_": convert_segmenter_mmseg},
    # ImageNet classifiers of timm / torchvision (backbone-only results)
    "timm": {"setr_": convert_setr_official, "segvit_": convert_segvit_official,
             "segmenter_vit_": convert_segmenter_timm, "upernet_swin_": convert_upernet_swin_mmseg,
             "maskformer_swin_": convert_maskformer_official, "fcn_hrnetv2_": convert_hrnet_timm_backbone},
    "torchvision": {"maskformer_r": convert_maskformer_official, "mask_rcnn_": convert_mask_rcnn_torchvision},
}
SOURCES = tuple(CONVERTERS)
# model families whose converters take `img_size` (plain-ViT models with a learned position embedding)
IMG_SIZE_FAMILIES = ("setr_", "segmenter_vit_", "segvit_")


def convert_checkpoint(
    src: str | Path | Mapping[str, Any], source: str, model_name: str, img_size: int | None = None
) -> ConversionResult:
    """Converts a foreign checkpoint to seglab's format.

    Args:
        src: a `.safetensors` / `.pth` / `.pt` / `.bin` file (torch files are read with `weights_only=True`), a JAX
            ViT `.npz` (read with `numpy.load(allow_pickle=False)`), or an already loaded state dict; `state_dict` /
            `model` wrappers are unwrapped.
        source: the layout of `src`: `hf`, `official`, `mmseg`, or `timm` / `torchvision` (ImageNet classifiers).
        model_name: the seglab model the weights are for (e.g. `segformer_b2`, `segnext_t`); its variant must match the
            checkpoint's shapes.
        img_size: ViT families only (`setr_*`, `segmenter_vit_*`, `segvit_*`): the crop an ImageNet ViT's position
            embedding is resampled for (default the model's), returned as the `img_size` override. A whole-model
            checkpoint keeps its own grid and refuses another; other families refuse the option.

    Returns:
        The converted state dict with the `overrides` and `num_classes` to build the model with, and the source keys
        deliberately dropped. For a backbone-only source (no `decode_head.*` key) the state dict holds only
        `backbone.*` keys, `num_classes` is None, `backbone_only` is True and the ImageNet classifier is dropped.
    """
    if source not in CONVERTERS:
        raise ValueError(f"unknown checkpoint source {source!r}; valid: {', '.join(SOURCES)}")
    families = CONVERTERS[source]
    converter = next((fn for prefix, fn in families.items() if model_name.startswith(prefix)), None)
    if converter is None:
        raise ValueError(f"no {source!r} converter for model {model_name!r}; supported model families: "
                         f"{', '.join(p + '*' for p in families)}")
    if img_size is not None:
        if not model_name.startswith(IMG_SIZE_FAMILIES):
            raise ValueError(f"img_size applies to the ViT families ({', '.join(p + '*' for p in IMG_SIZE_FAMILIES)}),"
                             f" whose position embedding is resampled to it; not to {model_name!r}")
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0:
            raise ValueError(f"img_size must be a positive int (pixels), got {img_size!r}")
    state_dict, origin = read_source(src)
    size_option = {} if img_size is None else {"img_size": img_size}
    return converter(state_dict, model_name, origin, **size_option)


__all__ = ["CONVERTERS", "IMG_SIZE_FAMILIES", "SOURCES", "ConversionResult", "convert_checkpoint"]
