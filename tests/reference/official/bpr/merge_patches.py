"""BPR's reassembly (`tools/merge_patches.py`), written from the repository's file, without the file I/O.

Follows chenhang98/BPR @ 9eafc3f1f6f6c4cfcdd0ceaf9f42bb2d07f90f4f : `tools/merge_patches.py` (`run_inst`). Quirks
kept: each patch's foreground probability is added into a float32 canvas at `[y:y+h, x:x+w]` with a count; where the
count is positive the mean, `> 0.5` (strict), replaces the coarse mask; elsewhere the coarse mask stays.
"""

from __future__ import annotations

import numpy as np


def reassemble(maskdt, patch_masks, hlist, wlist, padding=0):
    """`maskdt` (H, W) uint8 coarse mask, `patch_masks` the network outputs in patch order; the refined uint8 mask."""
    newmask = maskdt.copy()
    newmask_refined = np.zeros_like(newmask, dtype=np.float32)
    newmask_count = np.zeros_like(newmask_refined)
    for j, patch_mask in enumerate(patch_masks):
        y, h = hlist[j]
        x, w = wlist[j]
        if padding:
            patch_mask = patch_mask[padding:-padding, padding:-padding]
        newmask_refined[y:y + h, x:x + w] += patch_mask
        newmask_count[y:y + h, x:x + w] += 1
    s = newmask_count > 0
    newmask_refined[s] /= newmask_count[s]
    newmask[s] = newmask_refined[s] > 0.5
    return newmask.astype(np.uint8)
