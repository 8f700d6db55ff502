"""`config.MODEL.EXTRA` of the released HRNetV2 models, written from the official experiment files.

Follows HRNet/HRNet-Semantic-Segmentation: pytorch-v1.1 @ 88419ab18813f2c9193985e2d4d31d3d07abe839 :
`experiments/cityscapes/seg_hrnet_w18_small_v1_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml`,
`experiments/cityscapes/seg_hrnet_w18_small_v2_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml`; HRNet-OCR @
0bbb2880446ddff2d78f8dd7e8c4c610151d5a51 : `experiments/cityscapes/seg_hrnet_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12
_epoch484.yaml` (which sets `MODEL.ALIGN_CORNERS: False`, as do the LIP and PASCAL-Context W48 files; the ADE20K and
COCO-Stuff W48 files keep the default True). FUSE_METHOD is SUM everywhere; FINAL_CONV_KERNEL 1.
"""

from __future__ import annotations


def _stage(modules, block, blocks, channels):
    return {"NUM_MODULES": modules, "NUM_BRANCHES": len(channels), "BLOCK": block, "NUM_BLOCKS": list(blocks),
            "NUM_CHANNELS": list(channels), "FUSE_METHOD": "SUM"}


def _extra(stage1_blocks, stage1_channels, modules, blocks, width):
    widths = [width * 2**i for i in range(4)]
    return {
        "FINAL_CONV_KERNEL": 1,
        "STAGE1": _stage(1, "BOTTLENECK", [stage1_blocks], [stage1_channels]),
        "STAGE2": _stage(modules[0], "BASIC", [blocks] * 2, widths[:2]),
        "STAGE3": _stage(modules[1], "BASIC", [blocks] * 3, widths[:3]),
        "STAGE4": _stage(modules[2], "BASIC", [blocks] * 4, widths),
    }


EXTRA = {
    "w18_small_v1": _extra(1, 32, (1, 1, 1), 2, 16),  # NOTE: widths 16, 32, 64, 128 despite the name
    "w18_small_v2": _extra(2, 64, (1, 3, 2), 2, 18),
    "w48": _extra(4, 64, (1, 4, 3), 4, 48),
}
