import numpy as np
import pytest
import torch
from sentence_transformers.util import community_detection as st_community_detection

from clusterer.algorithms.community import Community, community_detection, detect_communities, labels_from_communities
from clusterer.algorithms.neighbors import faiss_neighbor_graph, torch_neighbor_graph
from tests.fakes import FakeEncoder


def clustered(n=1500, d=24, k=25, noise=0.45, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    sizes = rng.integers(0, k, n)
    return (centres[sizes] + noise * rng.standard_normal((n, d))).astype(np.float32)


def assert_same_as_st(x, threshold, min_size, ours):
    ref = st_community_detection(x, threshold=threshold, min_community_size=min_size)
    assert len(ours) == len(ref)
    assert [len(c) for c in ours] == [len(r) for r in ref]
    assert [set(c.members) for c in ours] == [set(r) for r in ref]
    assert [c.centre for c in ours] == [r[0] for r in ref]


@pytest.mark.parametrize("threshold,min_size", [(0.75, 10), (0.6, 5)])
def test_parity_with_sentence_transformers(threshold, min_size):
    x = clustered()
    ours = detect_communities(x, threshold, min_size, device="cpu")
    assert len(ours) > 5
    assert_same_as_st(x, threshold, min_size, ours)


@pytest.mark.parametrize("threshold,min_size", [(0.75, 10), (0.6, 5)])
def test_torch_backend_parity(threshold, min_size):
    x = clustered(seed=1)
    xn = torch.nn.functional.normalize(torch.from_numpy(x)).numpy()
    ours = community_detection(torch_neighbor_graph(xn, threshold, min_size, batch_size=256))
    assert_same_as_st(x, threshold, min_size, ours)


def test_parity_with_fake_encoder_text():
    topics = ["card payment declined", "refund not received", "change my pin", "lost phone app"]
    texts = [
        f"{topic} {w}" for topic in topics for w in ("today", "again", "please", "now", "help", "urgent", "why", "")
    ]
    x = FakeEncoder(dimension=64).encode(texts)
    for threshold, min_size in [(0.7, 3), (0.5, 2)]:
        assert_same_as_st(x, threshold, min_size, detect_communities(x, threshold, min_size))


def test_centre_first_and_similarities():
    x = clustered(n=800)
    xn = torch.nn.functional.normalize(torch.from_numpy(x)).numpy()
    communities = detect_communities(x, 0.7, 8)
    assert communities
    taken = set()
    for c in communities:
        assert isinstance(c, Community)
        assert c.members[0] == c.centre and len(c.members) == len(c.similarities) >= 8
        np.testing.assert_allclose(c.similarities, xn[c.members] @ xn[c.centre], atol=1e-6)
        assert all(s >= np.float32(0.7) for s in c.similarities)
        assert all(a >= b for a, b in zip(c.similarities[1:], c.similarities[2:]))
        assert taken.isdisjoint(c.members)
        taken.update(c.members)
    assert [len(c) for c in communities] == sorted((len(c) for c in communities), reverse=True)


def test_labels_from_communities():
    communities = [Community(3, [3, 0, 1], [1.0, 0.9, 0.8]), Community(4, [4, 5], [1.0, 0.8])]
    np.testing.assert_array_equal(labels_from_communities(communities, 7), [0, 0, -1, 0, 1, 1, -1])
    assert labels_from_communities([], 3).tolist() == [-1, -1, -1]


def test_edge_cases():
    assert detect_communities(np.zeros((0, 16), np.float32)) == []
    assert detect_communities(clustered(n=5), 0.0, 10) == []
    same = np.tile(clustered(n=1), (25, 1))
    out = detect_communities(same, 0.9, 10)
    assert len(out) == 1 and sorted(out[0].members) == list(range(25)) and out[0].centre == 0
    assert_same_as_st(same, 0.9, 10, out)
    x = clustered(n=400)
    for threshold, min_size in [(0.0, 5), (0.0, 500)]:
        assert_same_as_st(x, threshold, min_size, detect_communities(x, threshold, min_size))
    # at 1.0 only self-similarities can pass, and whether one does is decided by its last ulp:
    # sentence-transformers takes torch's float32 rounding of it, the exact search the float64 value
    xn = torch.nn.functional.normalize(torch.from_numpy(x)).numpy().astype(np.float64)
    passing = {i for i in range(len(x)) if xn[i] @ xn[i] >= 1.0}
    ones = detect_communities(x, 1.0, 1)
    assert {c.centre for c in ones} == passing and all(c.members == [c.centre] for c in ones)
    assert_same_as_st(x, 1.0, 1, torch_neighbor_communities(x, 1.0, 1))
    assert detect_communities(x, 1.0, 2) == []
    everything = detect_communities(x, -1.0, 3)
    assert len(everything) == 1 and len(everything[0]) == 400


def torch_neighbor_communities(x, threshold, min_size):
    xn = torch.nn.functional.normalize(torch.from_numpy(x)).numpy()
    return community_detection(torch_neighbor_graph(xn, threshold, min_size))


def test_taken_centre_is_skipped_and_leftovers_must_reach_min_size():
    # a chain on the unit circle: 0-1-2 close, 2-3-4 close; centre 2 takes everything within reach
    angles = np.deg2rad([0, 10, 20, 30, 40, 90])
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    threshold = float(np.cos(np.deg2rad(15)))
    out = detect_communities(x, threshold, 2)
    assert [c.members for c in out] == [[1, 0, 2], [3, 4]]
    assert_same_as_st(x, threshold, 2, out)


def test_deterministic_under_permutation():
    x = clustered(n=1200, seed=4)
    for tie_break in ("position", "density"):
        base = detect_communities(x, 0.7, 6, tie_break=tie_break)
        assert base == detect_communities(x, 0.7, 6, tie_break=tie_break)
    base = {frozenset(c.members) for c in detect_communities(x, 0.7, 6, tie_break="density")}
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(x))
        out = detect_communities(x[perm], 0.7, 6, tie_break="density")
        assert {frozenset(perm[c.members].tolist()) for c in out} == base


def test_tie_break_density_orders_equal_sizes_by_similarity_mass():
    x = np.array([[1, 0], [1, 0.05], [0, 1], [0.02, 1]], np.float32)
    graph = faiss_neighbor_graph(torch.nn.functional.normalize(torch.from_numpy(x)).numpy(), 0.9, 2)
    assert [c.centre for c in community_detection(graph)] == [0, 2]
    dense = community_detection(graph, tie_break="density")
    assert [set(c.members) for c in dense] == [{2, 3}, {0, 1}]


@pytest.mark.slow
@pytest.mark.real_model
def test_real_model_parity_with_sentence_transformers(banking77_embeddings):
    texts, _, x = banking77_embeddings
    assert len(texts) >= 2000
    for threshold, min_size in [(0.75, 10), (0.6, 5)]:
        ours = detect_communities(x, threshold, min_size, device="cpu")
        assert ours
        assert_same_as_st(x, threshold, min_size, ours)
