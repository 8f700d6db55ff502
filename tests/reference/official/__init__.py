"""Module trees written from official repositories that have no pip package, for the reference comparisons.

One sub-package per repository (`official.<repo_name>`): the official module structure and attribute names (so that a
tree's `state_dict()` keys are the released checkpoints' keys) and the official forward computations, in plain PyTorch.
Each file names the repository, the file(s) it follows and the commit. The trees never import seglab: they are the
independent side of a comparison. `mmcv_lite` holds minimal equivalents of the mmcv / mmseg 0.x building blocks
(ConvModule, resize, BaseDecodeHead, FCNHead, EncoderDecoder) that the mmseg-based repositories use, and `timm_lite` the
timm 0.3 / 0.4 `Mlp` and `DropPath` that several repositories copy into their files or pin. Where one official file is a
copy of another (MaskFormer's Swin of the Swin segmentation code's, the AS-MLP segmentation backbone of the
classification one, SETR's `vit_mla.py` of `vit.py`, SegViT's heads of `atm_head.py`), the tree imports the shared code
from the other tree and keeps only what differs.
"""
