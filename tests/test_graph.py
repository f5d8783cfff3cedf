"""The graph method: kNN search, Leiden levels, automatic granularity, outliers, the upkeep rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from clusterer.algorithms.graph import (
    DEFAULT_K,
    DEFAULT_MIN_SIZE,
    GraphClustering,
    KnnGraph,
    assign_by_weight,
    graph_clustering,
    knn_graph,
)
from clusterer.algorithms.knn import cell_blocked_knn, exact_knn
from clusterer.algorithms.leiden import symmetric_edges


def planted(
    sizes: list[int], d: int = 32, spread: float | list[float] = 0.35, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random centres, ``sizes[i]`` points with noise ``spread`` (per dimension x sqrt(d))."""
    rng = np.random.default_rng(seed)
    spreads = np.broadcast_to(np.asarray(spread, dtype=np.float64), (len(sizes),))
    centres = rng.standard_normal((len(sizes), d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    parts, labels = [], []
    for i, (size, s) in enumerate(zip(sizes, spreads)):
        parts.append(centres[i] + s / np.sqrt(d) * rng.standard_normal((size, d)))
        labels.append(np.full(size, i))
    x = np.vstack(parts).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(len(x))
    return x[perm], np.concatenate(labels)[perm]


def assigned_ari(truth: np.ndarray, labels: np.ndarray) -> float:
    out = labels.copy()
    free = out < 0
    out[free] = out.max(initial=-1) + 1 + np.arange(int(free.sum()))
    return adjusted_rand_score(truth, out)


def test_knn_graph_exact_excludes_self_and_sorts():
    x, _ = planted([50, 50], seed=1)
    g = knn_graph(x, 5)
    assert isinstance(g, KnnGraph)
    assert g.neighbours.shape == (100, 5) and g.similarities.shape == (100, 5)
    assert not (g.neighbours == np.arange(100)[:, None]).any()
    assert (np.diff(g.similarities, axis=1) <= 1e-6).all()
    brute = x @ x.T
    np.fill_diagonal(brute, -np.inf)
    expected = np.sort(brute, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(g.similarities, expected, atol=1e-5)


def test_knn_graph_pads_tiny_inputs():
    x, _ = planted([3], seed=2)
    g = knn_graph(x, 5)
    assert (g.neighbours[:, 2:] == -1).all()
    assert (g.neighbours[:, :2] >= 0).all()


def test_approximate_knn_recall_against_exact():
    x, _ = planted([400] * 10, d=24, spread=0.6, seed=3)
    en, _ = exact_knn(x, 10)
    an, asims = cell_blocked_knn(x, 10, nlist=40, nprobe=8)
    recall = np.mean([len(np.intersect1d(en[i], an[i])) / 10 for i in range(len(x))])
    assert recall >= 0.95
    np.testing.assert_allclose(asims[:, 0], np.einsum("ij,ij->i", x, x[an[:, 0]]), atol=1e-5)


def test_approximate_knn_with_all_cells_probed_is_exact():
    x, _ = planted([300] * 4, d=16, spread=0.8, seed=4)
    _, es = exact_knn(x, 8)
    _, asims = cell_blocked_knn(x, 8, nlist=10, nprobe=10)
    np.testing.assert_allclose(asims, es, atol=1e-5)


def test_symmetric_edges_once_per_pair():
    nbrs = np.array([[1, 2], [0, -1], [0, 1]])
    sims = np.array([[0.9, 0.5], [0.9, 0.0], [0.6, 0.4]], np.float32)
    edges, w = symmetric_edges(nbrs, sims)
    got = {tuple(e): round(float(v), 3) for e, v in zip(edges.tolist(), w)}
    assert got == {(0, 1): 0.9, (0, 2): 0.6, (1, 2): 0.4}


def test_planted_partition_of_varied_sizes_is_recovered():
    sizes = [400, 250, 150, 100, 60, 40]
    x, truth = planted(sizes, spread=[0.4, 0.5, 0.3, 0.45, 0.35, 0.3], seed=5)
    result = graph_clustering(x)
    assert isinstance(result, GraphClustering)
    assert assigned_ari(truth, result.labels) >= 0.95
    assert result.info["outlier_share"] < 0.05


def test_automatic_granularity_few_broad_topics():
    x, truth = planted([500] * 4, spread=0.9, seed=6)
    result = graph_clustering(x)
    assert 3 <= result.info["clusters"] <= 6
    assert assigned_ari(truth, result.labels) >= 0.9
    assert result.scores["tried"] and result.scores["rule"] == "leak"
    import json

    json.dumps(result.scores)
    json.dumps(result.info)


def test_automatic_granularity_many_small_intents():
    x, truth = planted([60] * 60, d=48, spread=0.35, seed=7)
    result = graph_clustering(x)
    assert 45 <= result.info["clusters"] <= 80
    assert assigned_ari(truth, result.labels) >= 0.9
    few = graph_clustering(planted([500] * 4, spread=0.9, seed=6)[0])
    assert result.resolution > 2 * few.resolution


def test_manual_resolution_is_used_and_coarser_at_lower_values():
    x, _ = planted([80] * 20, d=32, spread=1.2, seed=8)
    fine = graph_clustering(x, resolution=4.0)
    broad = graph_clustering(x, resolution=0.02)
    assert fine.resolution == 4.0 and broad.resolution == 0.02
    assert broad.info["clusters"] < fine.info["clusters"]
    assert fine.scores == {}


def test_seeded_runs_are_deterministic():
    x, _ = planted([120] * 8, spread=0.6, seed=9)
    a = graph_clustering(x, seed=3)
    b = graph_clustering(x, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.parents, b.parents)
    assert a.resolution == b.resolution


def test_hierarchy_is_consistent_and_coarser():
    x, _ = planted([60] * 30, d=16, spread=1.0, seed=10)
    result = graph_clustering(x)
    n_fine = result.info["clusters"]
    assert len(result.parents) == n_fine
    assert set(np.unique(result.labels[result.labels >= 0])) == set(range(n_fine))
    assert result.parents.min() >= 0
    n_coarse = len(np.unique(result.parents))
    assert n_coarse == result.info["coarse_clusters"] and n_coarse <= n_fine // 2
    coarse = result.coarse_labels
    assert ((coarse >= 0) == (result.labels >= 0)).all()
    for f in range(n_fine):
        assert len(np.unique(coarse[result.labels == f])) == 1


def test_initial_membership_keeps_ids_of_unchanged_clusters():
    x, _ = planted([100] * 6, spread=0.4, seed=11)
    first = graph_clustering(x, resolution=1.0)
    ids = np.where(first.labels >= 0, first.labels + 100, -1)
    again = graph_clustering(x, resolution=1.0, initial=ids)
    same = (first.labels >= 0) & (again.labels >= 0)
    np.testing.assert_array_equal(again.labels[same], ids[same])
    assert len(again.parents) == int(again.labels.max()) + 1
    assert (again.parents[np.unique(again.labels[again.labels >= 0])] >= 0).all()


def test_outliers_far_points_and_small_clusters():
    x, _ = planted([200, 200, 3], spread=[0.3, 0.3, 0.05], seed=12)
    rng = np.random.default_rng(13)
    far = rng.standard_normal((5, 32)).astype(np.float32)
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    x = np.vstack([x, far])
    result = graph_clustering(x, min_size=DEFAULT_MIN_SIZE)
    assert (result.labels[-5:] == -1).all()
    assert result.info["outliers"] >= 5
    assert result.info["outlier_share"] == result.info["outliers"] / len(x)
    assert 0.0 < result.info["min_similarity"] < 1.0
    sizes = np.bincount(result.labels[result.labels >= 0])
    assert sizes.min() >= DEFAULT_MIN_SIZE


def test_empty_and_tiny_inputs():
    empty = graph_clustering(np.zeros((0, 8), np.float32))
    assert len(empty.labels) == 0 and empty.info["min_similarity"] == 0.0
    x, _ = planted([4], seed=14)
    tiny = graph_clustering(x, min_size=5)
    assert (tiny.labels == -1).all()


def test_assign_by_weight_majority_of_weight():
    labels = np.array([[1, 2, 2, -1], [3, 3, 1, 1], [-1, -1, -1, -1], [5, 4, 4, 5], [7, 7, 7, 7]])
    sims = np.array(
        [
            [0.9, 0.5, 0.5, 0.9],
            [0.3, 0.3, 0.35, 0.35],
            [0.9, 0.9, 0.9, 0.9],
            [0.5, 0.5, 0.5, 0.1],
            [0.2, 0.2, -0.1, 0.0],
        ]
    )
    out, share = assign_by_weight(labels, sims)
    np.testing.assert_array_equal(out, [2, 1, -1, 4, 7])
    np.testing.assert_allclose(share, [1.0 / 2.8, 0.7 / 1.3, 0.0, 1.0 / 1.6, 1.0], rtol=1e-5)


def test_assign_by_weight_floor_and_ties():
    labels = np.array([[1, 2, 2], [4, 3, 9]])
    sims = np.array([[0.8, 0.5, 0.45], [0.6, 0.6, 0.1]])
    out, _ = assign_by_weight(labels, sims, min_similarity=0.5)
    np.testing.assert_array_equal(out, [1, 3])
    out, share = assign_by_weight(labels, sims, min_similarity=0.9)
    np.testing.assert_array_equal(out, [-1, -1])
    assert (share == 0).all()


def test_assign_by_weight_matches_a_loop_on_random_batches():
    rng = np.random.default_rng(15)
    labels = rng.integers(-1, 6, size=(1000, DEFAULT_K))
    sims = rng.uniform(-0.2, 1.0, size=(1000, DEFAULT_K)).astype(np.float32)
    out, share = assign_by_weight(labels, sims, min_similarity=0.3)
    for i in range(0, 1000, 37):
        ok = (labels[i] >= 0) & (sims[i] >= 0.3) & (sims[i] > 0)
        if not ok.any():
            assert out[i] == -1
            continue
        totals = {lab: sims[i][ok & (labels[i] == lab)].sum() for lab in set(labels[i][ok].tolist())}
        best = max(sorted(totals), key=lambda lab: totals[lab])
        assert out[i] == best
        assert share[i] == pytest.approx(totals[best] / sims[i][sims[i] > 0].sum(), rel=1e-4)


def test_assign_by_weight_rejoins_a_clustering():
    x, truth = planted([150] * 5, spread=0.4, seed=16)
    result = graph_clustering(x[:600])
    g = knn_graph(x, DEFAULT_K)
    nbrs = g.neighbours[600:]
    sims = g.similarities[600:]
    keep = nbrs < 600
    lab = np.where(keep, result.labels[np.where(keep, nbrs, 0)], -1)
    out, _ = assign_by_weight(lab, sims, min_similarity=result.info["min_similarity"])
    mapped = {
        c: np.bincount(truth[:600][result.labels == c]).argmax() for c in np.unique(result.labels[result.labels >= 0])
    }
    hits = [mapped[c] == t for c, t in zip(out.tolist(), truth[600:].tolist()) if c >= 0]
    assert len(hits) >= 140 and np.mean(hits) >= 0.97


def test_duplicates_share_a_label_and_do_not_fill_neighbour_lists():
    x, truth = planted([100] * 5, spread=0.4, seed=17)
    copies = np.repeat(x[:3], 40, axis=0)
    result = graph_clustering(np.vstack([x, copies]))
    assert result.info["distinct_points"] == 500
    for i in range(3):
        block = result.labels[500 + 40 * i : 500 + 40 * (i + 1)]
        assert (block == result.labels[i]).all()
    assert assigned_ari(truth, result.labels[:500]) >= 0.95


def test_a_given_graph_replaces_the_search_and_the_graph_used_is_returned():
    x, truth = planted([80] * 4, spread=0.4, seed=5)
    x = np.vstack([x, x[:2], x[:2]])  # copies: the given graph is mapped to distinct rows
    searched = graph_clustering(x, keep_graph=True)
    assert searched.knn is not None and searched.knn.neighbours.shape[0] == len(x)
    assert (searched.knn.neighbours != np.arange(len(x))[:, None]).all()  # no row names itself
    given = graph_clustering(x, graph=searched.knn)
    assert given.info["distinct_points"] == 320
    assert adjusted_rand_score(searched.labels, given.labels) == 1.0
    # a graph that is not the data's (each row linked to the next points only) is what is clustered
    n = len(x)
    ring = np.stack([(np.arange(n) + j) % n for j in (1, 2)], axis=1)
    other = graph_clustering(x, graph=KnnGraph(ring, np.full((n, 2), 0.9, np.float32)))
    assert assigned_ari(np.concatenate([truth, truth[:2], truth[:2]]), other.labels) < 0.5


def test_warm_start_splits_an_old_cluster_the_grown_data_separates():
    """What re-optimisation relies on: Leiden from an old, coarser membership splits it."""
    x, truth = planted([100] * 6, spread=0.35, seed=3)
    merged = truth // 2  # the old membership: pairs of true clusters as one
    result = graph_clustering(x, initial=merged)
    assert assigned_ari(truth, result.labels) >= 0.95
    fixed = graph_clustering(x, initial=merged, resolution=1.0)
    assert assigned_ari(truth, fixed.labels) >= 0.95


def test_large_path_starts_fine_and_passes_over_the_full_graph_once(monkeypatch):
    """Above LARGE_N the base partition starts at LARGE_START_RESOLUTION: one Leiden pass over
    the full graph, the granularity then chosen on the contracted graph; the planted groups are
    still recovered."""
    import clusterer.algorithms.granularity as granularity
    import clusterer.algorithms.graph as graph_module

    x, truth = planted([60] * 40, d=48, spread=0.35, seed=21)
    monkeypatch.setattr(graph_module, "LARGE_N", 1000)
    full_passes = []
    graphs = []
    real = granularity.leiden

    def counting(wg, resolution, seed, **kw):
        graphs.append(wg)
        if wg is graphs[0]:  # the first call is on the full graph
            full_passes.append(resolution)
        return real(wg, resolution, seed, **kw)

    monkeypatch.setattr(granularity, "leiden", counting)
    res = graph_clustering(x)
    assert full_passes == [graph_module.LARGE_START_RESOLUTION]
    assert assigned_ari(truth, res.labels) > 0.9
