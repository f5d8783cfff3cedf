"""A 2D layout of points from their kNN graph: UMAP (umap-learn) on precomputed neighbours.

The neighbour lists are the ones clustering already built (a run's stored kNN graph, or the
project's own kNN search), handed to UMAP as ``precomputed_knn`` so that UMAP runs no
neighbour search of its own; UMAP then optimises the layout of that graph.
"""

from __future__ import annotations

import numpy as np

from clusterer.algorithms.projection import pca_2d

MIN_POINTS = 16
"""Below this many points the layout is the PCA picture (UMAP's spectral start needs more)."""
EPOCHS = 200


def umap_inputs(neighbours: np.ndarray, similarities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's ``(knn_indices, knn_dists)`` from a kNN table over positions (self excluded, -1
    padding, most similar first): each row starts with the point itself at distance 0, and a
    cosine similarity s becomes the distance 1 - s."""
    neighbours = np.asarray(neighbours, dtype=np.int64)
    sims = np.asarray(similarities, dtype=np.float32)
    n = len(neighbours)
    own = np.arange(n, dtype=np.int64)[:, None]
    indices = np.concatenate([own, neighbours], axis=1)
    dists = np.concatenate([np.zeros((n, 1), np.float32), np.clip(1.0 - sims, 0.0, 2.0)], axis=1)
    dists[indices < 0] = np.inf
    return indices, dists.astype(np.float32)


def umap_layout(
    x: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, *, seed: int = 0, epochs: int = EPOCHS
) -> np.ndarray:
    """(n, 2) float32 coordinates of the rows of ``x`` laid out by UMAP from their kNN table
    (positions, self excluded, -1 padding); deterministic for a seed."""
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n < MIN_POINTS or neighbours.shape[1] < 1:
        return pca_2d(x)
    import warnings

    import umap

    indices, dists = umap_inputs(neighbours, similarities)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; knn disconnections
        model = umap.UMAP(
            n_neighbors=min(indices.shape[1], n - 1),
            n_components=2,
            metric="cosine",
            precomputed_knn=(indices, dists),
            random_state=seed,
            n_epochs=epochs,
            init="spectral",
            low_memory=True,
        )
        xy = model.fit_transform(x)
    return np.asarray(xy, dtype=np.float32)
