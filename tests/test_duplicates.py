"""Near-duplicate star groups against a brute-force (numpy all-pairs) reference."""

from __future__ import annotations

import numpy as np
import pytest

from clusterer.algorithms.duplicates import (
    DuplicateGroup,
    duplicate_groups,
    group_pairs,
    keep_one,
    star_groups,
    threshold_neighbours,
    threshold_pairs,
)


def reference_groups(x: np.ndarray, threshold: float) -> list[tuple[list[int], list[float]]]:
    """The rule written directly on the dense similarity matrix."""
    sims = x @ x.T
    n = len(x)
    taken = np.zeros(n, bool)
    groups = []
    for p in range(n):
        if taken[p]:
            continue
        near = [q for q in range(n) if q != p and not taken[q] and sims[p, q] >= threshold]
        if not near:
            continue
        near.sort(key=lambda q: (-sims[p, q], q))
        members = [p, *near]
        taken[members] = True
        groups.append((members, [1.0] + [float(sims[p, q]) for q in near]))
    groups.sort(key=lambda g: (-len(g[0]), g[0][0]))
    return groups


def synthetic(n_base=300, copies=4, noise=0.12, d=24, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_base, d)).astype(np.float32)
    sizes = rng.integers(1, copies + 1, n_base)
    x = np.repeat(base, sizes, axis=0) + noise * rng.standard_normal((int(sizes.sum()), d)).astype(np.float32)
    x = x[rng.permutation(len(x))]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def away_from_threshold(x: np.ndarray, threshold: float, eps: float = 2e-5) -> bool:
    sims = x @ x.T
    return not np.any(np.abs(sims - threshold) < eps)


@pytest.mark.parametrize("threshold", [0.9, 0.93, 0.95])
@pytest.mark.parametrize("seed", [0, 1])
def test_exact_groups_equal_brute_force(threshold, seed):
    x = synthetic(seed=seed)
    assert away_from_threshold(x, threshold)
    got = duplicate_groups(x, threshold, search="exact")
    want = reference_groups(x, threshold)
    assert len(want) > 20
    assert [g.members for g in got] == [m for m, _ in want]
    for g, (_, sims) in zip(got, want):
        np.testing.assert_allclose(g.similarities, sims, atol=1e-5)


def test_star_groups_do_not_chain():
    # a~b and b~c but a and c below the threshold: c must not join a's group
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.3), np.sin(0.3), 0.0])
    c = np.array([np.cos(0.6), np.sin(0.6), 0.0])
    x = np.vstack([a, b, c]).astype(np.float32)
    t = float(np.cos(0.35))
    groups = duplicate_groups(x, t)
    assert [g.members for g in groups] == [[0, 1]]
    # visiting b first makes b the centre of everything
    groups = star_groups(threshold_neighbours(x, t), order=np.array([1, 0, 2]))
    assert [sorted(g.members) for g in groups] == [[0, 1, 2]]
    assert groups[0].members[0] == 1


def test_every_member_within_threshold_of_first_and_groups_disjoint():
    x = synthetic(n_base=200, copies=6, noise=0.2, seed=3)
    groups = duplicate_groups(x, 0.9)
    seen = set()
    for g in groups:
        assert len(g.members) >= 2
        assert not seen & set(g.members)
        seen |= set(g.members)
        assert np.all(x[g.members] @ x[g.members[0]] >= 0.9 - 1e-6)
        assert g.similarities == sorted(g.similarities, reverse=True)
    assert [len(g.members) for g in groups] == sorted((len(g.members) for g in groups), reverse=True)


def test_approximate_search_finds_the_same_groups_with_all_lists_probed():
    x = synthetic(n_base=400, copies=3, seed=5)
    exact = duplicate_groups(x, 0.95, search="exact")
    approx = duplicate_groups(x, 0.95, search="approximate", nlist=16, nprobe=16)
    assert [g.members for g in approx] == [g.members for g in exact]
    few = threshold_neighbours(x, 0.95, search="approximate", nlist=16, nprobe=1)
    assert not few.exact
    assert threshold_pairs(few) <= threshold_pairs(threshold_neighbours(x, 0.95))


def test_pairs_and_keep_one():
    groups = [DuplicateGroup([4, 1, 7], [1.0, 0.99, 0.97]), DuplicateGroup([2, 3], [1.0, 0.96])]
    assert group_pairs(groups) == {(1, 4), (4, 7), (1, 7), (2, 3)}
    assert keep_one(groups, "first") == [[1, 7], [3]]
    lengths = [0, 10, 5, 5, 3, 0, 0, 10]
    assert keep_one(groups, "longest", lengths) == [[4, 7], [3]]
    with pytest.raises(ValueError):
        keep_one(groups, "random")


def test_empty_and_singletons():
    assert duplicate_groups(np.zeros((0, 8), np.float32), 0.9) == []
    x = np.eye(5, dtype=np.float32)
    assert duplicate_groups(x, 0.5) == []


@pytest.mark.slow
@pytest.mark.real_model
def test_real_embeddings_equal_brute_force(banking77_embeddings):
    _, _, emb = banking77_embeddings
    x = emb[:1500]
    for threshold in (0.85, 0.9):
        got = duplicate_groups(x, threshold, search="exact")
        want = reference_groups(x, threshold)
        assert len(want) >= 5
        same = [g.members for g in got] == [m for m, _ in want]
        if not same:  # only a pair within float rounding of the threshold may differ
            sims = x @ x.T
            assert np.sort(np.abs(sims - threshold).ravel())[0] < 1e-5
        else:
            for g, (_, sims) in zip(got, want):
                np.testing.assert_allclose(g.similarities, sims, atol=1e-5)
        approx = duplicate_groups(x, threshold, search="approximate", nlist=8, nprobe=8)
        assert group_pairs(approx) == group_pairs(got)
