import numpy as np
import pytest

from clusterer.algorithms.kmeans import assign_nearest, kmeans, update_centroid
from clusterer.errors import ClustererError, InvalidParameterError


def _blobs(n_per=40, k=4, d=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    truth = np.repeat(np.arange(k), n_per)
    x = centers[truth] + spread * rng.standard_normal((len(truth), d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, truth, centers


def test_recovers_blobs_and_shapes():
    from sklearn.metrics import adjusted_rand_score

    x, truth, _ = _blobs()
    result = kmeans(x, 4, seed=1, nredo=3)
    assert result.labels.dtype == np.int64 and result.labels.shape == (len(x),)
    assert result.labels.min() >= 0 and result.labels.max() < 4
    assert result.centroids.shape == (4, x.shape[1]) and result.centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, rtol=1e-5)
    assert result.similarities.dtype == np.float32
    expected = np.einsum("ij,ij->i", x, result.centroids[result.labels])
    np.testing.assert_allclose(result.similarities, expected, rtol=1e-5, atol=1e-6)
    assert adjusted_rand_score(truth, result.labels) == 1.0
    assert result.inertia == pytest.approx(2 * np.sum(1 - result.similarities), rel=1e-3, abs=1e-4)
    assert result.k == 4 and result.objective


def test_reproducible_with_seed():
    x, _, _ = _blobs(n_per=30, k=6, spread=0.5, seed=3)
    a = kmeans(x, 6, seed=7)
    b = kmeans(x, 6, seed=7)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_euclidean_variant():
    x, _, _ = _blobs(n_per=20, k=3)
    result = kmeans(x, 3, spherical=False)
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, rtol=1e-5)
    assert set(result.labels.tolist()) == {0, 1, 2}


def test_invalid_k_and_empty_input():
    x, _, _ = _blobs(n_per=2, k=2)
    with pytest.raises(InvalidParameterError, match="k <= 4"):
        kmeans(x, 5)
    for bad in (0, -1, 2.5):
        with pytest.raises(ClustererError):
            kmeans(x, bad)
    result = kmeans(x, len(x))
    assert sorted(result.labels.tolist()) == [0, 1, 2, 3]
    empty = kmeans(np.empty((0, 8), dtype=np.float32), 3)
    assert empty.labels.shape == (0,) and empty.centroids.shape == (0, 8)


def test_assign_nearest():
    x, truth, centers = _blobs(n_per=10, k=3)
    labels, sims = assign_nearest(x, centers * 5.0)
    np.testing.assert_array_equal(labels, truth)
    assert labels.dtype == np.int64 and sims.dtype == np.float32
    assert np.all(sims > 0.9) and np.all(sims <= 1.0 + 1e-6)
    empty_labels, empty_sims = assign_nearest(np.empty((0, 16)), centers)
    assert empty_labels.shape == empty_sims.shape == (0,)
    with pytest.raises(InvalidParameterError):
        assign_nearest(x, np.empty((0, 16)))
    with pytest.raises(InvalidParameterError):
        assign_nearest(x, centers[:, :8])


def test_update_centroid_running_mean():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((10, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    raw, count = update_centroid(vectors[:6].mean(axis=0), 6, vectors[6:], normalize=False)
    assert count == 10
    np.testing.assert_allclose(raw, vectors.mean(axis=0), atol=1e-6)
    unit, count = update_centroid(vectors[:6].mean(axis=0), 6, vectors[6:])
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw), atol=1e-6)
    same, count = update_centroid(unit, 10, [])
    assert count == 10
    np.testing.assert_allclose(same, unit, atol=1e-6)
