"""The MaskFormer meta-architecture (semantic-segmentation inference) and its ADE20K configurations, written from the
official files.

Follows facebookresearch/MaskFormer @ da3e60d85fdeedcb31476b5edd7d328826ce56cc : `mask_former/mask_former_model.py`
(`MaskFormer`: normalise, pad the batch to `size_divisibility` 32 (`MODEL.MASK_FORMER.SIZE_DIVISIBILITY`), backbone,
head; at test time upsample the mask logits bilinearly to the padded size, `semantic_inference`
`softmax(class)[..., :-1]` x `sigmoid(mask)` summed over the queries, then `sem_seg_postprocess`: crop to the image and
resize to the requested output size; `sem_seg_postprocess_before_inference` False), `mask_former/modeling/
criterion.py` (`SetCriterion`: its persistent buffer `empty_weight`, which the checkpoints hold as
`criterion.empty_weight`), `mask_former/config.py` and `configs/ade20k-150/{Base-ADE20K-150,maskformer_R50_bs16_160k}
.yaml`, `configs/ade20k-150/swin/maskformer_swin_tiny_bs16_160k.yaml` (100 queries, width 256, 8 heads, FFN 2048,
0 encoder / 6 decoder layers, post-norm, dropout 0.1, deep supervision, GN pixel decoder 256 / 256, no-object weight
0.1). `pixel_mean` / `pixel_std` are non-persistent buffers (not in checkpoints).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from official.maskformer.detectron2_layers import pad_to_divisibility, sem_seg_postprocess
from official.maskformer.mask_former_head import MaskFormerHead
from official.maskformer.pixel_decoder import BasePixelDecoder
from official.maskformer.resnet import build_resnet_backbone
from official.maskformer.swin import D2SwinTransformer
from official.maskformer.transformer_predictor import TransformerPredictor


class SetCriterion(nn.Module):
    """The state of MaskFormer's loss (the loss itself is not reproduced)."""

    def __init__(self, num_classes, eos_coef=0.1):
        super().__init__()
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)


class MaskFormer(nn.Module):
    def __init__(self, *, backbone, sem_seg_head, criterion, size_divisibility=32,
                 pixel_mean=(123.675, 116.280, 103.530), pixel_std=(58.395, 57.120, 57.375)):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.size_divisibility = size_divisibility if size_divisibility >= 0 else backbone.size_divisibility
        self.register_buffer("pixel_mean", torch.Tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.Tensor(pixel_std).view(-1, 1, 1), False)

    def raw_outputs(self, images):
        """Normalised (C, H, W) images -> (padded batch, image sizes, head outputs)."""
        padded, image_sizes = pad_to_divisibility(list(images), self.size_divisibility)
        return padded, image_sizes, self.sem_seg_head(self.backbone(padded))

    @staticmethod
    def semantic_inference(mask_cls, mask_pred):
        mask_cls = F.softmax(mask_cls, dim=-1)[..., :-1]
        return torch.einsum("qc,qhw->chw", mask_cls, mask_pred.sigmoid())

    def forward(self, batched_inputs):
        """`batched_inputs`: dicts with `image` (C, H, W) in 0-255; returns dicts with `sem_seg` (K, H, W)."""
        images = [(x["image"] - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        padded, image_sizes, outputs = self.raw_outputs(images)
        mask_pred_results = F.interpolate(outputs["pred_masks"], size=padded.shape[-2:], mode="bilinear",
                                          align_corners=False)
        results = []
        for mask_cls, mask_pred, inputs, image_size in zip(outputs["pred_logits"], mask_pred_results, batched_inputs,
                                                           image_sizes, strict=True):
            height, width = inputs.get("height", image_size[0]), inputs.get("width", image_size[1])
            r = self.semantic_inference(mask_cls, mask_pred)
            results.append({"sem_seg": sem_seg_postprocess(r, image_size, height, width)})
        return results


def maskformer_ade20k(backbone: str, num_classes: int = 150) -> MaskFormer:
    """The ADE20K MaskFormer of the official configs: backbone "R50", "R101" or "swin_tiny"."""
    if backbone.startswith("R"):
        net = build_resnet_backbone(depth=int(backbone[1:]), norm="FrozenBN", stride_in_1x1=False)
        shapes = {f"res{i + 2}": (256 * 2**i, 4 * 2**i) for i in range(4)}
    else:
        net = D2SwinTransformer(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                                drop_path_rate=0.3)
        shapes = {f"res{i + 2}": (96 * 2**i, 4 * 2**i) for i in range(4)}
    pixel_decoder = BasePixelDecoder(shapes, conv_dim=256, mask_dim=256, norm="GN")
    predictor = TransformerPredictor(shapes["res5"][0], mask_classification=True, num_classes=num_classes,
                                     hidden_dim=256, num_queries=100, nheads=8, dropout=0.1, dim_feedforward=2048,
                                     enc_layers=0, dec_layers=6, pre_norm=False, deep_supervision=True, mask_dim=256,
                                     enforce_input_project=False)
    head = MaskFormerHead(shapes, num_classes=num_classes, pixel_decoder=pixel_decoder,
                          transformer_predictor=predictor, transformer_in_feature="res5", ignore_value=255)
    return MaskFormer(backbone=net, sem_seg_head=head, criterion=SetCriterion(num_classes, eos_coef=0.1))
