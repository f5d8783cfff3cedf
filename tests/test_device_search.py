"""The torch search paths (GPU code, run here on CPU tensors) against the numpy/FAISS ones."""

import numpy as np
import pytest
import torch
from sentence_transformers.util import community_detection as st_community_detection

from clusterer.algorithms import device_search
from clusterer.algorithms.community import community_detection
from clusterer.algorithms.device_search import chunk_rows, exact_knn, threshold_graph
from clusterer.algorithms.knn import exact_knn as faiss_exact_knn
from clusterer.algorithms.neighbors import NeighborGraph, faiss_neighbor_graph, torch_neighbor_graph


def clustered(n=1500, d=32, k=25, noise=0.45, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    x = (centres[rng.integers(0, k, n)] + noise * rng.standard_normal((n, d))).astype(np.float32)
    return torch.nn.functional.normalize(torch.from_numpy(x)).numpy()


def as_sets(g: NeighborGraph):
    return {c: set(nb.tolist()) for c, nb, _ in g}


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_threshold_graph_equals_the_faiss_graph(precision):
    x = clustered()
    ref = faiss_neighbor_graph(x, 0.75, 5)
    got = torch_neighbor_graph(x, 0.75, 5, device="cpu", batch_size=97, precision=precision)
    assert len(ref) > 50
    assert as_sets(got) == as_sets(ref)
    np.testing.assert_array_equal(got.centres, ref.centres)
    np.testing.assert_array_equal(got.lims, ref.lims)
    for (_, nb, s), (_, _, rs) in zip(got, ref):
        assert np.all(np.diff(s) <= 0)
        ties = np.flatnonzero(np.diff(s) == 0)
        assert np.all(nb[ties] < nb[ties + 1])
        np.testing.assert_allclose(s, rs, atol=1e-6)


@pytest.mark.parametrize("precision", ["float32", "float16"])
@pytest.mark.parametrize("threshold,min_size", [(0.75, 10), (0.6, 5)])
def test_communities_identical_to_sentence_transformers(precision, threshold, min_size):
    x = clustered(seed=3)
    ref = st_community_detection(torch.from_numpy(x), threshold=threshold, min_community_size=min_size)
    ours = community_detection(torch_neighbor_graph(x, threshold, min_size, batch_size=128, precision=precision))
    assert len(ref) > 5
    assert [set(c.members) for c in ours] == [set(r) for r in ref]
    assert [c.centre for c in ours] == [r[0] for r in ref]


def test_float16_screen_rechecks_pairs_at_the_threshold():
    """A threshold set exactly at one pair's float32 similarity: the float16 screen alone would
    put pairs within its error on the wrong side; the recheck keeps the float32 answer."""
    x = clustered(n=600, d=16, noise=0.8, seed=5)
    sims = x @ x.T
    off = np.sort(sims[~np.eye(len(x), dtype=bool)])
    t = float(off[int(0.9 * len(off))])
    ref = faiss_neighbor_graph(x, t, 2)
    got = torch_neighbor_graph(x, t, 2, precision="float16")
    assert as_sets(got) == as_sets(ref)
    half = (torch.from_numpy(x).half() @ torch.from_numpy(x).half().T).float().numpy()
    assert np.any((half >= np.float32(t)) != (sims >= np.float32(t))), "the screen alone must disagree somewhere"


def test_chunks_follow_the_free_memory(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_search, "_available_ram", lambda: 4 * 2**30)
    assert chunk_rows(1_000_000, cpu, 5) == device_search.CPU_CHUNK_BYTES // (5 * 1_000_000)
    monkeypatch.setattr(device_search, "_available_ram", lambda: 40 * 2**20)
    assert chunk_rows(1_000_000, cpu, 5) == (10 * 2**20) // (5 * 1_000_000)
    assert chunk_rows(100, cpu, 5, limit=7) == 7
    assert chunk_rows(10, cpu, 5) == 10
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * 2**30, 141 * 2**30))
    rows = chunk_rows(1_000_000, torch.device("cuda"), 3)
    assert rows == int(device_search.CUDA_FREE_SHARE * 80 * 2**30 // 3_000_000)


def test_empty_and_small_inputs():
    centres, _, _, _, n = threshold_graph(np.zeros((0, 8), np.float32), 0.5, 3)
    assert n == 0 and len(centres) == 0
    assert len(torch_neighbor_graph(clustered(n=4), 0.5, 5)) == 0
    nb, _ = exact_knn(np.ones((1, 4), np.float32), 3)
    assert nb.tolist() == [[-1, -1, -1]]
    nb, _ = exact_knn(np.eye(3, dtype=np.float32), 5)
    assert nb.shape == (3, 5) and np.all(nb[:, 2:] == -1)
    assert set(nb[0, :2].tolist()) == {1, 2}


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_exact_knn_matches_faiss(precision):
    x = clustered(n=2000, d=48, seed=7)
    ref_n, ref_s = faiss_exact_knn(x, 15)
    got_n, got_s = exact_knn(x, 15, batch_size=300, precision=precision)
    assert got_n.shape == (2000, 15) and got_n.dtype == np.int64
    assert not np.any(got_n == np.arange(2000)[:, None])
    np.testing.assert_allclose(got_s, ref_s, atol=1e-5)
    same = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(got_n.tolist(), ref_n.tolist())])
    assert same > 0.999
    assert np.all(np.diff(got_s, axis=1) <= 0)


def test_default_clustering_on_the_torch_knn_matches_the_faiss_one(monkeypatch):
    """graph_clustering fed by the torch exact kNN (the GPU path, on CPU tensors here) gives the
    partition the FAISS exact kNN gives."""
    from sklearn.metrics import adjusted_rand_score

    import clusterer.algorithms.knn as knn_module
    from clusterer.algorithms.graph import graph_clustering

    x = clustered(n=3000, d=32, k=12, noise=0.5, seed=11)
    ref = graph_clustering(x, search="exact", device="cpu")

    def torch_knn(x, k, **_):
        return exact_knn(x, k, precision="float16")

    monkeypatch.setattr(knn_module, "knn", torch_knn)
    got = graph_clustering(x, search="exact", device="cpu")
    assert ref.info["clusters"] >= 8
    assert adjusted_rand_score(ref.labels, got.labels) > 0.99
