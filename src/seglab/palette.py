"""Class colours (ground floor: imports nothing of seglab): a palette of distinct colours for any class count."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def make_palette(
    num_classes: int, seed: int = 0, palette: Sequence[Sequence[int]] | np.ndarray | None = None
) -> np.ndarray:
    """A (num_classes, 3) uint8 palette of distinct colours, none of them black (black marks ignored pixels).

    Colours are picked greedily from a seeded pool of random colours, each the farthest (in RGB) from black
    and from the colours already chosen, so neighbouring class indices get unrelated, well separated colours.

    Args:
        num_classes: number of classes K.
        seed: seed of the random pool; the same seed gives the same palette.
        palette: a known palette (e.g. a dataset's class colours) with at least K rows of 3 values in
            [0, 255]; its first K rows are returned as they are.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if palette is not None:
        known = np.asarray(palette)
        if known.ndim != 2 or known.shape[1] != 3 or known.shape[0] < num_classes:
            raise ValueError(f"palette must have shape (>= {num_classes}, 3), got {known.shape}")
        if not np.issubdtype(known.dtype, np.integer) or known.min() < 0 or known.max() > 255:
            raise ValueError("palette values must be integers in [0, 255]")
        return known[:num_classes].astype(np.uint8)
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, size=(max(4096, 8 * num_classes), 3)).astype(np.float64)
    # distance of every pool colour to its nearest chosen colour; black counts as chosen
    nearest = np.linalg.norm(pool, axis=1)
    chosen = []
    for _ in range(num_classes):
        best = int(np.argmax(nearest))
        chosen.append(pool[best])
        nearest = np.minimum(nearest, np.linalg.norm(pool - pool[best], axis=1))
    return np.stack(chosen).astype(np.uint8)
