import numpy as np
import pytest

import clusterer.algorithms.agglomerative as agg
from clusterer.algorithms.agglomerative import LINKAGES, agglomerative
from clusterer.errors import InvalidParameterError, TooLargeError


def _blobs(n_per=15, k=4, d=24, spread=0.03, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    truth = np.repeat(np.arange(k), n_per)
    x = centers[truth] + spread * rng.standard_normal((len(truth), d)).astype(np.float32)
    order = rng.permutation(len(truth))
    return x[order], truth[order]


@pytest.mark.parametrize("linkage, threshold", [("ward", 1.0), ("average", 0.3), ("complete", 0.3)])
def test_recovers_separated_blobs(linkage, threshold):
    from sklearn.metrics import adjusted_rand_score

    x, truth = _blobs()
    result = agglomerative(x, threshold, linkage=linkage)
    assert adjusted_rand_score(truth, result.labels) == 1.0
    assert result.n_clusters == 4
    assert result.labels.dtype == np.int64
    assert result.labels[0] == 0 and sorted(set(result.labels.tolist())) == [0, 1, 2, 3]
    assert result.similarities.dtype == np.float32
    assert np.all(result.similarities > 0.9) and np.all(result.similarities <= 1 + 1e-6)


@pytest.mark.parametrize("linkage", LINKAGES)
def test_matches_scikit_learn(linkage):
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import adjusted_rand_score

    x, _ = _blobs(n_per=20, k=3, spread=0.4, seed=5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    threshold = 1.2 if linkage == "ward" else 0.5
    metric = "euclidean" if linkage == "ward" else "cosine"
    reference = AgglomerativeClustering(
        n_clusters=None, distance_threshold=threshold, linkage=linkage, metric=metric
    ).fit(unit)
    result = agglomerative(x, threshold, linkage=linkage)
    assert result.n_clusters == reference.n_clusters_ > 1
    assert adjusted_rand_score(reference.labels_, result.labels) == 1.0


def test_threshold_extremes():
    x, _ = _blobs(n_per=5, k=3)
    x = np.vstack([x, x[:1]])
    for linkage in LINKAGES:
        singletons = agglomerative(x, 0.0, linkage=linkage)
        assert singletons.n_clusters == len(x)
        np.testing.assert_array_equal(singletons.labels, np.arange(len(x)))
        np.testing.assert_allclose(singletons.similarities, 1.0, atol=1e-6)
        assert agglomerative(x, 1e-9, linkage=linkage).n_clusters == len(x) - 1
        assert agglomerative(x, 100.0, linkage=linkage).n_clusters == 1


def test_small_and_invalid_inputs():
    assert agglomerative(np.empty((0, 4)), 0.5).n_clusters == 0
    one = agglomerative(np.ones((1, 4)), 0.5)
    assert one.labels.tolist() == [0] and one.n_clusters == 1
    with pytest.raises(InvalidParameterError, match="linkage"):
        agglomerative(np.ones((3, 4)), 0.5, linkage="single")
    with pytest.raises(InvalidParameterError):
        agglomerative(np.ones((3, 4)), -1.0)


def test_too_large(monkeypatch):
    x, _ = _blobs(n_per=5, k=2)
    monkeypatch.setattr(agg, "MAX_AGGLOMERATIVE_SIZE", 9)
    with pytest.raises(TooLargeError, match="kmeans"):
        agglomerative(x, 0.5)
    assert agglomerative(x[:9], 0.5).labels.shape == (9,)
    with pytest.raises(TooLargeError, match="at most 4"):
        agglomerative(x, 0.5, max_size=4)
