"""A 2D picture of embeddings: the first two principal axes, computed by SVD on a sample."""

from __future__ import annotations

import numpy as np


def sample_positions(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of at most ``limit`` of ``n`` items, the same for the same arguments."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(n, 2) coordinates of the rows of ``x`` on their two principal axes.

    Each axis is oriented so that its largest loading is positive, which makes the picture
    the same from one call to the next; with fewer than two dimensions of spread the
    missing axis is zero.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros((len(x), 2), dtype=np.float32)
    if len(x) < 2:
        return out
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    signs[signs == 0] = 1
    coords = centred @ (axes * signs[:, None]).T
    out[:, : coords.shape[1]] = coords
    return out
