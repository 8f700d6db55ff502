"""The `Segmenter` wrapper of the official code, written from the official files.

Follows rstrudel/segmenter @ 20d1bfad354165ee45c3f65972a4d9c131f58d53 : `segm/model/segmenter.py` (`Segmenter`) and
`segm/model/factory.py` (`create_segmenter`, `create_vit`, `create_decoder`). Same module names (`encoder`,
`decoder`; the released `checkpoint.pth` holds the state dict under `model`) and forward: pad the image right / bottom
to a multiple of the patch, encode, drop the class token, decode at the padded grid, resize the masks bilinearly to the
padded size (`F.interpolate` default `align_corners`), crop to the image.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from official.segmenter.decoder import DecoderLinear, MaskTransformer
from official.segmenter.utils import padding, unpadding
from official.segmenter.vit import VisionTransformer


class Segmenter(nn.Module):
    def __init__(self, encoder, decoder, n_cls):
        super().__init__()
        self.n_cls = n_cls
        self.patch_size = encoder.patch_size
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, im):
        h_ori, w_ori = im.size(2), im.size(3)
        im = padding(im, self.patch_size)
        h, w = im.size(2), im.size(3)
        x = self.encoder(im, return_features=True)
        x = x[:, 1 + self.encoder.distilled :]  # remove the class token
        masks = self.decoder(x, (h, w))
        masks = F.interpolate(masks, size=(h, w), mode="bilinear")
        return unpadding(masks, (h_ori, w_ori))


def create_segmenter(model_cfg: dict) -> Segmenter:
    """`factory.create_segmenter` for a `net_kwargs` dict (`image_size`, `patch_size`, `d_model`, `n_heads`,
    `n_layers`, `n_cls`, `dropout`, `drop_path_rate`, `decoder`: {`name`, ...}); pretrained loading left out."""
    cfg = dict(model_cfg)
    decoder_cfg = dict(cfg.pop("decoder"))
    decoder_cfg["n_cls"] = cfg["n_cls"]
    cfg.pop("backbone", None)
    cfg.pop("normalization", None)
    encoder = VisionTransformer(image_size=cfg["image_size"], patch_size=cfg["patch_size"], n_layers=cfg["n_layers"],
                                d_model=cfg["d_model"], d_ff=4 * cfg["d_model"], n_heads=cfg["n_heads"], n_cls=1000,
                                dropout=cfg.get("dropout", 0.1), drop_path_rate=cfg.get("drop_path_rate", 0.0))
    name = decoder_cfg.pop("name")
    decoder_cfg["d_encoder"] = encoder.d_model
    decoder_cfg["patch_size"] = encoder.patch_size
    if "linear" in name:
        decoder = DecoderLinear(**decoder_cfg)
    elif name == "mask_transformer":
        dim = encoder.d_model
        decoder = MaskTransformer(n_heads=dim // 64, d_model=dim, d_ff=4 * dim, **decoder_cfg)
    else:
        raise ValueError(f"Unknown decoder: {name}")
    return Segmenter(encoder, decoder, n_cls=cfg["n_cls"])
