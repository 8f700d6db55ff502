"""Instance segmentation: BPR boundary patch refinement of coarse instance masks (`seglab.instance.bpr`)."""

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

__all__ = [
    "BPR_VARIANTS",
    "BPRNet",
    "BPRVariant",
    "PatchDataset",
    "PatchSet",
    "boundary_pixels",
    "boundary_scores",
    "build_bpr",
    "concat_patch_sets",
    "extract_training_patches",
    "normalize_image",
    "paste_patches",
    "propose_patches",
    "refine",
    "train_step",
]
