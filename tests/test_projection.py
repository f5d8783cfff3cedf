"""The 2D projection used by the page's map."""

from __future__ import annotations

import numpy as np

from clusterer.algorithms.projection import pca_2d, sample_positions


def test_pca_keeps_the_two_directions_of_largest_spread():
    rng = np.random.default_rng(0)
    n = 400
    x = np.zeros((n, 10), np.float32)
    x[:, 3] = rng.normal(0, 10, n)
    x[:, 7] = rng.normal(0, 3, n)
    x += rng.normal(0, 0.01, (n, 10))
    xy = pca_2d(x)
    assert xy.shape == (n, 2)
    assert abs(np.corrcoef(xy[:, 0], x[:, 3])[0, 1]) > 0.99
    assert abs(np.corrcoef(xy[:, 1], x[:, 7])[0, 1]) > 0.99
    assert np.allclose(xy.mean(axis=0), 0, atol=1e-3)
    assert np.array_equal(pca_2d(x), xy)  # same picture every time (oriented axes)


def test_pca_edge_cases():
    assert pca_2d(np.zeros((0, 5))).shape == (0, 2)
    assert np.array_equal(pca_2d(np.ones((1, 5))), np.zeros((1, 2), np.float32))
    line = np.outer(np.arange(5.0), np.ones(3))
    xy = pca_2d(line)
    assert np.allclose(xy[:, 1], 0, atol=1e-6) and np.ptp(xy[:, 0]) > 0


def test_sample_positions_are_sorted_unique_and_repeatable():
    assert np.array_equal(sample_positions(10, 20), np.arange(10))
    s = sample_positions(10_000, 500, seed=3)
    assert len(s) == 500 and len(np.unique(s)) == 500 and np.all(np.diff(s) > 0)
    assert np.array_equal(s, sample_positions(10_000, 500, seed=3))
