"""Module trees written from official repositories that have no pip package, for the reference comparisons.

One sub-package per repository (`official.<repo_name>`): the official module structure and attribute names (so that a
tree's `state_dict()` keys are the released checkpoints' keys) and the official forward computations, in plain
PyTorch. Each file names the repository, the file(s) it follows and the commit. The trees never import seglab: they
are the independent side of a comparison. `mmcv_lite` holds minimal equivalents of the mmcv / mmseg 0.x building
blocks (ConvModule, resize, BaseDecodeHead, EncoderDecoder) that the mmseg-based repositories use.
"""
