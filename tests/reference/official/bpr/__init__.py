"""chenhang98/BPR (formerly tinyalpha/BPR) @ 9eafc3f1f6f6c4cfcdd0ceaf9f42bb2d07f90f4f: the refinement network (mmseg 0.7
HRNet + FCN head with the coarse-mask conv) and the patch tools `split_patches.py` / `merge_patches.py` (see each
module)."""
