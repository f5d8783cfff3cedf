"""The map's layout: UMAP on precomputed neighbours (clusterer.algorithms.layout) and the
per-run layout service (clusterer.service.projection): the run's stored kNN graph when it
covers the run, else the project's kNN search; cached on disk."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score

from clusterer.algorithms.knn import knn
from clusterer.algorithms.layout import MIN_POINTS, umap_inputs, umap_layout
from clusterer.algorithms.projection import pca_2d
from clusterer.api import Store
from clusterer.service import projection
from clusterer.service.run_graph import save_graph
from tests.test_upkeep import topic_texts


def blobs(n=150, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, 24)).astype(np.float32) * 3
    labels = np.arange(n) % 3
    x = centres[labels] + rng.standard_normal((n, 24)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_umap_inputs_put_each_point_first_at_distance_zero():
    nbrs = np.array([[1, 2], [0, -1], [0, 1]])
    sims = np.array([[0.9, 0.5], [0.9, 0.0], [0.5, 0.4]], np.float32)
    indices, dists = umap_inputs(nbrs, sims)
    assert indices.tolist() == [[0, 1, 2], [1, 0, -1], [2, 0, 1]]
    assert np.allclose(dists[:, 0], 0) and np.isclose(dists[0, 1], 0.1) and np.isinf(dists[1, 2])


def test_umap_layout_keeps_groups_apart_and_is_deterministic():
    from sklearn.cluster import KMeans

    x, labels = blobs()
    nbrs, sims = knn(x, 10)
    xy = umap_layout(x, nbrs, sims)
    assert xy.shape == (len(x), 2) and xy.dtype == np.float32
    found = KMeans(3, n_init=4, random_state=0).fit_predict(xy)
    assert adjusted_rand_score(labels, found) == 1.0
    assert np.array_equal(umap_layout(x, nbrs, sims), xy)


def test_tiny_inputs_fall_back_to_pca():
    x, _ = blobs(n=MIN_POINTS - 1)
    nbrs, sims = knn(x, 3)
    assert np.array_equal(umap_layout(x, nbrs, sims), pca_2d(x))


def test_layout_uses_the_stored_run_graph_and_is_cached(tmp_path):
    with Store.open(tmp_path / "data", device="cpu") as store:
        store.ingest(topic_texts())
        run = store.cluster("kmeans", k=3)
        searched = projection.compute_layout(store, run.id)
        assert searched.neighbours == "search" and len(searched.ids) == 36
        ids, x = store.embeddings(sorted(searched.ids.tolist()))
        nbrs, sims = knn(x, 10)
        save_graph(store.data_dir, run.id, ids, np.where(nbrs >= 0, ids[nbrs], -1), sims)
        stored = projection.compute_layout(store, run.id)
        assert stored.neighbours == "run graph" and np.array_equal(stored.ids, searched.ids)
        projection.save_layout(store.data_dir, stored)
        again = projection.load_layout(store.data_dir, run.id)
        assert again is not None and np.array_equal(again.xy, stored.xy)
        shown = projection.map_points(store, again, limit=10)
        assert shown["sampled"] == 10 and shown["total"] == 36 and shown["projection"] == "umap"
        assert {p["cluster"] for p in shown["points"]} <= {c.id for c in store.clusters()}
