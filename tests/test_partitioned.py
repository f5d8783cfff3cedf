import numpy as np
import pytest

from clusterer.algorithms.community import community_detection
from clusterer.algorithms.neighbors import faiss_neighbor_graph
from clusterer.algorithms.partitioned import default_nlist, partition, partitioned_neighbor_graph


def clustered(n=3000, centres=60, noise=0.35, d=32, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def as_sets(graph):
    return {int(c): set(nb.tolist()) for c, nb, _ in graph}


def test_probing_every_cell_gives_the_exact_graph():
    x = clustered()
    exact = faiss_neighbor_graph(x, 0.8, 5)
    full = partitioned_neighbor_graph(x, 0.8, 5, nlist=20, nprobe=20)
    assert as_sets(full) == as_sets(exact)
    assert full.total_edges == exact.total_edges


def test_pairs_found_from_one_side_reach_both_lists():
    x = clustered(n=2000, centres=10, noise=0.8)
    exact = as_sets(faiss_neighbor_graph(x, 0.6, 1))
    sparse = partitioned_neighbor_graph(x, 0.6, 1, nlist=40, nprobe=1)
    lists = as_sets(sparse)
    pairs = {(i, j) for i, nbrs in lists.items() for j in nbrs}
    assert all((j, i) in pairs for i, j in pairs)
    assert all(nbrs <= exact[i] for i, nbrs in lists.items())
    assert 0 < len(pairs) < sum(len(v) for v in exact.values())


def test_default_probing_keeps_nearly_every_edge_and_the_same_communities():
    x = clustered()
    exact = faiss_neighbor_graph(x, 0.8, 5)
    approx = partitioned_neighbor_graph(x, 0.8, 5)
    assert approx.total_edges >= 0.97 * exact.total_edges
    approx_sets = as_sets(approx)
    for centre, members in as_sets(exact).items():
        if centre in approx_sets:
            assert approx_sets[centre] <= members
    ex = {frozenset(c.members) for c in community_detection(exact)}
    ap = {frozenset(c.members) for c in community_detection(approx)}
    assert len(ex & ap) >= 0.9 * len(ex)


def test_lists_are_sorted_and_above_threshold():
    x = clustered(n=1000)
    g = partitioned_neighbor_graph(x, 0.8, 5, nlist=16, nprobe=4)
    for centre, nbrs, sims in g:
        assert len(nbrs) >= 5
        assert np.all(sims >= np.float32(0.8))
        assert np.all(np.diff(sims) <= 0)
        assert np.allclose(sims, x[nbrs] @ x[centre], atol=1e-5)


def test_two_level_partition_assigns_every_point_to_its_best_cells():
    x = clustered(n=4000, d=16)
    cells = partition(x, 1100, 3)
    assert cells.shape == (4000, 3)
    assert cells.min() >= 0
    assert len(np.unique(cells[:, 0])) > 100


def test_small_and_empty_inputs():
    assert partitioned_neighbor_graph(np.zeros((0, 8), np.float32), 0.5, 2).total_edges == 0
    x = clustered(n=3)
    assert len(partitioned_neighbor_graph(x, 0.5, 5)) == 0
    assert 1 <= default_nlist(50_000) <= 50_000 // 32


def test_bad_parameters():
    with pytest.raises(ValueError):
        partitioned_neighbor_graph(clustered(n=100), 0.5, 0)


def test_cell_layout_keeps_every_cell_the_two_level_partition_makes():
    """The two-level partition may make more cells than asked (each coarse cell's share is
    rounded); every point must still be in exactly one cell of the layout."""
    from clusterer.algorithms.partitioned import cell_layout

    rng = np.random.default_rng(3)
    x = clustered(n=6000, centres=7, d=16)
    x = np.concatenate([x, clustered(n=700, centres=3, d=16, seed=4)])[rng.permutation(6700)]
    order, bounds, probes = cell_layout(x, 1100, 4, 0)
    assert bounds[0] == 0 and bounds[-1] == len(x)
    assert np.array_equal(np.sort(order), np.arange(len(x)))
    assert len(probes) == len(bounds) - 1 >= 1100
