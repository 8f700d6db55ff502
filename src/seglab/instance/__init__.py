"""Instance segmentation: Mask R-CNN on torchvision (`seglab.instance.mask_rcnn`), BPR boundary patch refinement of
coarse instance masks (`seglab.instance.bpr`), BPR over datasets and its checkpoints (`seglab.instance.bpr_dataset`);
BPR training is `seglab.engine.refine`."""

from seglab.instance.bpr import (
    BPR_VARIANTS,
    BPRNet,
    BPRVariant,
    PatchDataset,
    PatchSet,
    boundary_pixels,
    boundary_scores,
    build_bpr,
    concat_patch_sets,
    extract_training_patches,
    normalize_image,
    paste_patches,
    propose_patches,
    refine,
    train_step,
)
from seglab.instance.bpr_dataset import (
    build_patch_set,
    compare_before_after,
    load_bpr,
    matched_boundary_iou,
    refine_dataset,
    save_bpr,
)
from seglab.instance.mask_rcnn import (
    MASK_RCNN_VARIANTS,
    MaskRCNNOptions,
    build_mask_rcnn,
    evaluate_instances,
    predict_instances,
)

__all__ = [
    "BPR_VARIANTS",
    "BPRNet",
    "BPRVariant",
    "MASK_RCNN_VARIANTS",
    "MaskRCNNOptions",
    "PatchDataset",
    "PatchSet",
    "boundary_pixels",
    "boundary_scores",
    "build_bpr",
    "build_mask_rcnn",
    "concat_patch_sets",
    "evaluate_instances",
    "extract_training_patches",
    "normalize_image",
    "paste_patches",
    "predict_instances",
    "propose_patches",
    "refine",
    "train_step",
    "build_patch_set",
    "compare_before_after",
    "load_bpr",
    "matched_boundary_iou",
    "refine_dataset",
    "save_bpr",
]
