import numpy as np
import pytest
import torch

from clusterer.algorithms.neighbors import (
    NeighborGraph,
    build_ivf_index,
    estimate_graph,
    faiss_neighbor_graph,
    neighbor_graph,
    torch_neighbor_graph,
)


def clustered(n=1200, d=24, k=15, noise=0.4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    x = centres[rng.integers(0, k, n)] + noise * rng.standard_normal((n, d))
    return torch.nn.functional.normalize(torch.from_numpy(x.astype(np.float32))).numpy()


def dense_lists(x, t, m):
    sims = torch.from_numpy(x) @ torch.from_numpy(x).T
    mask = sims >= torch.tensor(t)
    return {i: set(np.flatnonzero(mask[i].numpy()).tolist()) for i in range(len(x)) if mask[i].sum() >= m}


def exact_lists(x, t, m):
    mask = x.astype(np.float64) @ x.astype(np.float64).T >= np.float64(np.float32(t))
    return {i: set(np.flatnonzero(mask[i]).tolist()) for i in range(len(x)) if mask[i].sum() >= m}


def as_dict(g: NeighborGraph):
    return {c: set(nb.tolist()) for c, nb, _ in g}


@pytest.mark.parametrize("t,m", [(0.8, 10), (0.6, 4)])
def test_backends_agree_with_dense(t, m):
    x = clustered()
    gf = faiss_neighbor_graph(x, t, m, batch_size=500)
    gt = torch_neighbor_graph(x, t, m, device="cpu", batch_size=300)
    expected = dense_lists(x, t, m)
    assert as_dict(gf) == expected
    assert as_dict(gt) == expected
    np.testing.assert_array_equal(gf.centres, gt.centres)
    np.testing.assert_array_equal(gf.lims, gt.lims)
    np.testing.assert_allclose(np.sort(gf.similarities), np.sort(gt.similarities), atol=1e-6)
    assert gf.total_edges == sum(len(v) for v in expected.values())
    assert gf.max_list_size == max(len(v) for v in expected.values())


def test_lists_sorted_self_included_and_sims_exact():
    x = clustered(n=600)
    g = faiss_neighbor_graph(x, 0.7, 5)
    assert len(g) > 0 and g.lims.dtype == np.int64 and g.similarities.dtype == np.float32
    for c, nb, s in g:
        assert len(nb) >= 5
        assert c in set(nb.tolist())
        assert np.all(np.diff(s) <= 0)
        ties = np.flatnonzero(np.diff(s) == 0)
        assert np.all(nb[ties] < nb[ties + 1])
        np.testing.assert_allclose(s, x[nb] @ x[c], atol=1e-6)
        assert np.all(s >= np.float32(0.7))


def test_borderline_pairs_are_decided_in_exact_arithmetic():
    """A threshold at the float32 rounding of one pair's exact similarity: that pair (and any
    other within a float32 matmul's rounding error) is decided by the exact float64 product."""
    x = clustered(n=800, d=16, noise=0.8, seed=3)
    exact = x.astype(np.float64) @ x.astype(np.float64).T
    off = exact[~np.eye(len(x), dtype=bool)]
    t = float(np.float32(np.sort(off)[len(off) // 2]))
    g = faiss_neighbor_graph(x, t, 2)
    mask = exact >= np.float64(np.float32(t))
    expected = {i: set(np.flatnonzero(mask[i]).tolist()) for i in range(len(x)) if mask[i].sum() >= 2}
    assert as_dict(g) == expected


def test_border_recheck_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from clusterer.algorithms.neighbors import faiss_neighbor_graph\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((400, 8)).astype(np.float32)\n"
        "x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
        "g = faiss_neighbor_graph(x, 0.5, 3)\n"
        "assert len(g) > 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_edge_cases():
    empty = faiss_neighbor_graph(np.zeros((0, 8), np.float32), 0.5, 3)
    assert len(empty) == 0 and empty.total_edges == 0 and empty.max_list_size == 0
    assert len(torch_neighbor_graph(np.zeros((0, 8), np.float32), 0.5, 3)) == 0
    few = clustered(n=4)
    assert len(faiss_neighbor_graph(few, 0.0, 5)) == 0
    same = np.tile(clustered(n=1), (30, 1))
    g = faiss_neighbor_graph(same, 0.99, 10)
    assert len(g) == 30 and g.max_list_size == 30
    assert as_dict(g) == as_dict(torch_neighbor_graph(same, 0.99, 10))
    x = clustered(n=300)
    g0 = faiss_neighbor_graph(x, -1.0, 3)
    assert len(g0) == 300 and g0.total_edges == 300 * 300
    for t in (0.0, 1.0):
        # at 1.0 self-similarities decide, one ulp apart: faiss' border recheck is exact (float64),
        # the torch graph is torch's float32 matmul
        assert as_dict(faiss_neighbor_graph(x, t, 1)) == exact_lists(x, t, 1)
        assert as_dict(torch_neighbor_graph(x, t, 1)) == dense_lists(x, t, 1)
    with pytest.raises(ValueError):
        faiss_neighbor_graph(x, 0.5, 0)


def test_dispatcher_and_approximate_index():
    x = clustered(n=2000, k=20)
    exact = faiss_neighbor_graph(x, 0.75, 10)
    assert as_dict(neighbor_graph(x, 0.75, 10, device="cpu")) == as_dict(exact)
    index = build_ivf_index(x, nlist=16, nprobe=16)
    assert as_dict(neighbor_graph(x, 0.75, 10, index=index)) == as_dict(exact)
    with pytest.raises(ValueError):
        neighbor_graph(x, 0.75, 10, device="tpu")


def test_estimate_graph():
    x = clustered(n=1500)
    g = faiss_neighbor_graph(x, 0.7, 10)
    est = estimate_graph(x, 0.7, 10, sample_size=1500)
    assert est.candidate_fraction == pytest.approx(len(g) / 1500)
    assert est.expected_edges == pytest.approx(g.total_edges)
    assert est.max_neighborhood_fraction == pytest.approx(g.max_list_size / 1500)
    small = estimate_graph(x, 0.7, 10, sample_size=300, seed=1)
    assert small.sample_size == 300
    assert small.expected_edges == pytest.approx(g.total_edges, rel=0.25)
