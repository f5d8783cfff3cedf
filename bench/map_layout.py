"""The sentence map at scale: our layout (UMAP on the precomputed kNN graph, the project's own
neighbour search) against the peer (umap-learn with its own NN-descent neighbour search), on
the same synthetic embeddings, plus the cost of one map answer served from a cached layout.

Prints both times, the ratio, and for each layout the share of every point's 10 nearest in 2D
that are among its 15 nearest in the embedding space (neighbour preservation) and the ARI of a
k-means on the 2D points against the true groups.

    python bench/map_layout.py --n 100000
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def synthetic(n: int, groups: int = 50, dim: int = 384, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)).astype(np.float32)
    labels = rng.integers(0, groups, n)
    x = centres[labels] + 1.2 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def preservation(x: np.ndarray, xy: np.ndarray, high: np.ndarray, sample: int = 2000) -> float:
    from sklearn.neighbors import NearestNeighbors

    rows = np.random.default_rng(1).choice(len(x), min(sample, len(x)), replace=False)
    low = NearestNeighbors(n_neighbors=11).fit(xy).kneighbors(xy[rows], return_distance=False)[:, 1:]
    return float(np.mean([len(set(low[i]) & set(high[r])) / 10 for i, r in enumerate(rows)]))


def ari(xy: np.ndarray, labels: np.ndarray, groups: int) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    found = KMeans(groups, n_init=1, random_state=0).fit_predict(xy)
    return float(adjusted_rand_score(labels, found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=50)
    args = parser.parse_args()
    import umap

    from clusterer.algorithms.knn import knn
    from clusterer.algorithms.layout import EPOCHS, umap_layout

    x, labels = synthetic(args.n, args.groups)
    umap_layout(x[:500], *knn(x[:500], 15))  # compile umap's and pynndescent's numba code outside the timings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        umap.UMAP(n_neighbors=16, metric="cosine", random_state=0, n_epochs=10).fit_transform(x[:500])
    t = time.perf_counter()
    nbrs, sims = knn(x, 15)
    t_knn = time.perf_counter() - t
    t = time.perf_counter()
    ours = umap_layout(x, nbrs, sims)
    t_ours = time.perf_counter() - t + t_knn
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = umap.UMAP(
            n_neighbors=16, metric="cosine", random_state=0, n_epochs=EPOCHS, low_memory=True
        ).fit_transform(x)
    t_peer = time.perf_counter() - t
    print(f"n={args.n:,} dim={x.shape[1]} groups={args.groups}")
    print(f"ours: knn {t_knn:.1f}s + umap on it {t_ours - t_knn:.1f}s = {t_ours:.1f}s")
    print(f"peer: umap-learn with its own NN-descent {t_peer:.1f}s")
    print(f"ratio peer/ours: {t_peer / t_ours:.2f}")
    for name, xy in (("ours", ours), ("peer", peer)):
        print(
            f"{name}: neighbour preservation {preservation(x, xy, nbrs):.3f}, "
            f"k-means ARI vs true groups {ari(xy, labels, args.groups):.3f}"
        )


if __name__ == "__main__":
    main()
