"""k-means over sentence embeddings (FAISS), plus helpers for incremental assignment.

Embeddings are L2-normalised before use, so cosine similarity is the inner product. With
``spherical=True`` (the default) FAISS normalises the centroids after every iteration and
assigns points by inner product, i.e. spherical k-means, which maximises the sum of cosine
similarities; with ``spherical=False`` it is ordinary Euclidean k-means on the unit vectors.
Either way the returned centroids are L2-normalised and ``similarities`` are cosines to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clusterer.errors import InvalidParameterError


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`.

    labels:       (n,) int64, cluster of each point in ``0..k-1``.
    centroids:    (k, d) float32, L2-normalised centroids; row ``j`` is cluster ``j``.
    similarities: (n,) float32, cosine of each point to its cluster's centroid.
    inertia:      sum of squared Euclidean distances of the (normalised) points to the
                  centroids FAISS trained (for spherical k-means, ``2 * sum(1 - similarity)``).
    objective:    FAISS's objective after each iteration (sum of inner products when
                  spherical, of squared distances otherwise), for monitoring convergence.
    """

    labels: np.ndarray
    centroids: np.ndarray
    similarities: np.ndarray
    inertia: float
    objective: list[float]

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def _as_unit_matrix(embeddings, name: str = "embeddings") -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidParameterError(f"{name} must be a 2-D array (n, d), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def kmeans(
    embeddings: np.ndarray,
    k: int,
    seed: int = 0,
    niter: int = 20,
    spherical: bool = True,
    nredo: int = 1,
    max_points_per_centroid: int = 256,
) -> KMeansResult:
    """Cluster ``embeddings`` (n, d) into ``k`` clusters with ``faiss.Kmeans``.

    Reproducible: the same data, ``k`` and ``seed`` give the same labels. FAISS trains on a
    seeded sample of at most ``k * max_points_per_centroid`` points when n is larger; every point
    is then assigned to its nearest trained centroid. ``nredo`` > 1 repeats training with
    different initialisations and keeps the best. A cluster may come out empty only in
    degenerate cases (e.g. duplicated points); FAISS splits large clusters to avoid that.

    Empty input gives an empty result. Raises :class:`InvalidParameterError` when ``k`` < 1,
    ``k`` > n, or ``niter``/``nredo`` < 1.
    """
    x = _as_unit_matrix(embeddings)
    n, d = x.shape
    if n == 0:
        return KMeansResult(
            labels=np.empty(0, dtype=np.int64),
            centroids=np.empty((0, d), dtype=np.float32),
            similarities=np.empty(0, dtype=np.float32),
            inertia=0.0,
            objective=[],
        )
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise InvalidParameterError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if k > n:
        raise InvalidParameterError(f"k={k} is larger than the number of sentences ({n}); choose k <= {n}")
    if niter < 1 or nredo < 1:
        raise InvalidParameterError(f"niter and nredo must be >= 1, got {niter} and {nredo}")

    import faiss

    km = faiss.Kmeans(
        d,
        k,
        niter=int(niter),
        nredo=int(nredo),
        seed=int(seed),
        spherical=bool(spherical),
        max_points_per_centroid=int(max_points_per_centroid),
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(x)
    trained = np.asarray(km.centroids, dtype=np.float32).reshape(k, d)
    _, nearest = km.index.search(x, 1)
    labels = nearest.reshape(-1).astype(np.int64)

    centroids = _as_unit_matrix(trained, "centroids")
    similarities = np.einsum("ij,ij->i", x, centroids[labels]).astype(np.float32)
    diff = x - trained[labels]
    inertia = float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
    objective = [float(v) for v in np.asarray(km.obj).reshape(-1)] if km.obj is not None else []
    return KMeansResult(labels, centroids, similarities, inertia, objective)


def assign_nearest(embeddings: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assign each embedding to the centroid of highest cosine similarity.

    Returns ``(labels, similarities)``: int64 row indices into ``centroids`` and float32
    cosines. Both inputs are L2-normalised first. Ties go to the lower centroid index.
    Raises :class:`InvalidParameterError` when there are points but no centroids, or the
    dimensions differ.
    """
    x = _as_unit_matrix(embeddings)
    c = _as_unit_matrix(centroids, "centroids")
    if len(x) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    if len(c) == 0:
        raise InvalidParameterError("no centroids to assign to")
    if x.shape[1] != c.shape[1]:
        raise InvalidParameterError(f"embeddings have dimension {x.shape[1]} but centroids {c.shape[1]}")

    import faiss

    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c)
    sims, labels = index.search(x, 1)
    return labels.reshape(-1).astype(np.int64), sims.reshape(-1).astype(np.float32)


def update_centroid(
    centroid: np.ndarray,
    count: int,
    new_vectors: np.ndarray,
    normalize: bool = True,
) -> tuple[np.ndarray, int]:
    """Running mean: the centroid of ``count`` members after adding ``new_vectors``.

    Computes ``(count * centroid + sum(unit(new_vectors))) / (count + m)`` and returns it with
    the new count ``count + m``; L2-normalised when ``normalize`` (the default, matching the
    centroids :func:`kmeans` returns). This is exact when ``centroid`` is the unnormalised mean
    of the members' unit vectors; for a normalised centroid it weighs the old members as if
    they all lay on the centroid, which is the usual approximation for spherical k-means.
    """
    if count < 0:
        raise InvalidParameterError(f"count must be >= 0, got {count}")
    c = np.asarray(centroid, dtype=np.float64).reshape(-1)
    new = _as_unit_matrix(np.asarray(new_vectors).reshape(-1, c.shape[0]), "new_vectors")
    total = int(count) + len(new)
    if total == 0:
        return c.astype(np.float32), 0
    mean = (count * c + new.sum(axis=0, dtype=np.float64)) / total
    if normalize:
        norm = np.linalg.norm(mean)
        if norm > 0:
            mean = mean / norm
    return mean.astype(np.float32), total
