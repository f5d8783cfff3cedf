"""The shard side of --ray without a Ray cluster: what one shard returns for the kNN and k-means
steps, and how the driver merges the shards' candidates (plain arrays, no ray needed)."""

from __future__ import annotations

import numpy as np

from clusterer.algorithms.knn import exact_knn
from clusterer.distributed.ray_shards import ShardActor, kmeans_plus_plus, merge_top_k


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_kmeans_step_sums_and_counts_per_nearest_centroid():
    x = unit(1000, 8)
    shard = ShardActor(x, np.arange(1000))
    centroids = x[:7]
    sums, counts, objective = shard.kmeans_step(centroids)
    labels, sims = shard.assign(centroids)
    expected = np.zeros((7, 8))
    np.add.at(expected, labels, x.astype(np.float64))
    assert np.allclose(sums, expected) and (counts == np.bincount(labels, minlength=7)).all()
    assert objective == np.float64(sims.sum(dtype=np.float64))
    assert (labels == (x @ centroids.T).argmax(axis=1)).all()


def test_two_exact_shards_merged_equal_the_exact_search():
    x = unit(300, 12, seed=1)
    a, b = ShardActor(x[:120], np.arange(120)), ShardActor(x[120:], np.arange(120, 300))
    rows = np.arange(300)
    nbrs, sims = merge_top_k([a.search(x, 9), b.search(x, 9)], rows, 8)
    ref, ref_sims = exact_knn(x, 8)
    assert (nbrs == ref).mean() > 0.999 and np.allclose(sims, ref_sims, atol=1e-5)


def test_merge_top_k_drops_self_and_pads():
    parts = [
        (np.array([[0, 3]]), np.array([[1.0, 0.5]], np.float32)),
        (np.array([[7, -1]]), np.array([[0.9, 0.0]], np.float32)),
    ]
    pos, sims = merge_top_k(parts, np.array([0]), 4)
    assert pos.tolist() == [[7, 3, -1, -1]]
    assert np.allclose(sims, [[0.9, 0.5, 0.0, 0.0]])


def test_kmeans_plus_plus_is_seeded_and_spreads():
    x = unit(500, 6, seed=2)
    first, again = kmeans_plus_plus(x, 5, seed=3), kmeans_plus_plus(x, 5, seed=3)
    assert np.array_equal(first, again)
    assert len({tuple(r) for r in first.round(6).tolist()}) == 5
