"""`clusterer cluster --ray` on a two-node Ray cluster on loopback: leiden and k-means agree with
the single-machine run (ARI >= 0.95), the run records the cluster and its stages, and the
sharded kNN equals the exact search."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import adjusted_rand_score

from clusterer.algorithms.knn import exact_knn
from clusterer.api import Store
from clusterer.cli import cli
from clusterer.distributed.ray_shards import sharded_knn, start_shards, stop_shards
from storage import clusters as cq
from tests.fakes import FakeEncoder, LookupEncoder
from tests.ray_support import ray, time_guard, two_node_cluster

pytestmark = pytest.mark.slow

WORDS = [f"w{i}" for i in range(400)]


@pytest.fixture(scope="module")
def cluster():
    with two_node_cluster() as c:
        yield c


def topic_corpus(n_topics=12, per_topic=90, seed=0) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = []
    for t in range(n_topics):
        core = [f"topic{t}word{j}" for j in range(4)]
        for i in range(per_topic):
            words = [*rng.choice(core, size=3, replace=False), *rng.choice(WORDS, size=2), f"item{t}x{i}"]
            texts.append(" ".join(words))
    return texts


def json_of(output: str) -> dict:
    """The command's JSON document (Ray's warnings on stderr are mixed into the output)."""
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


def labels_of(store: Store, run_id: int) -> dict[int, int]:
    with store.db.read() as session:
        ids, labels, _ = cq.assignments_of_run(session, run_id)
    return {int(i): -1 if l is None else int(l) for i, l in zip(ids, labels)}


def ari(a: dict[int, int], b: dict[int, int]) -> float:
    keys = sorted(a)
    assert keys == sorted(b)
    return adjusted_rand_score([a[k] for k in keys], [b[k] for k in keys])


def test_sharded_knn_equals_the_exact_search(cluster):
    with time_guard():
        x = np.random.default_rng(1).standard_normal((700, 16)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        actors = start_shards(x, 3)
        try:
            nbrs, sims = sharded_knn(actors, x, 10)
        finally:
            stop_shards(actors)
        ref_n, ref_s = exact_knn(x, 10)
        assert (nbrs == ref_n).mean() > 0.999
        assert np.allclose(sims, ref_s, atol=1e-5)
        assert not (nbrs == np.arange(700)[:, None]).any()  # a row is never its own neighbour


def test_sharded_approximate_knn_keeps_most_neighbours(cluster):
    with time_guard():
        rng = np.random.default_rng(2)
        centres = rng.standard_normal((30, 16)).astype(np.float32)
        x = centres[rng.integers(30, size=3000)] + 0.3 * rng.standard_normal((3000, 16)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        actors = start_shards(x, 2, approximate=True, nprobe=8)
        try:
            sizes = ray.get([a.size.remote() for a in actors])
            nbrs, _ = sharded_knn(actors, x, 10)
        finally:
            stop_shards(actors)
        assert sum(sizes) == 3000 and min(sizes) > 500  # whole cells, balanced, every row once
        ref, _ = exact_knn(x, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nbrs, ref)])
        assert recall >= 0.9, recall
        assert not (nbrs == np.arange(3000)[:, None]).any()


def test_leiden_on_ray_matches_one_machine_and_records_the_cluster(cluster, tmp_path, monkeypatch):
    with time_guard():
        data = tmp_path / "d"
        (tmp_path / "in.txt").write_text("\n".join(topic_corpus()) + "\n", encoding="utf-8")
        runner = CliRunner()
        assert runner.invoke(cli, ["ingest", str(tmp_path / "in.txt"), "--data-dir", str(data)]).exit_code == 0
        one = runner.invoke(cli, ["cluster", "--data-dir", str(data), "--json"])
        assert one.exit_code == 0, one.output
        many = runner.invoke(cli, ["cluster", "--data-dir", str(data), "--ray", "local", "--json"])
        assert many.exit_code == 0, many.output
        run_one, run_ray = json_of(one.output)["run"], json_of(many.output)["run"]
        stats = run_ray["params"]["stats"]
        assert stats["ray"]["nodes"] == 2 and stats["ray"]["shards"] == 2
        assert stats["ray"]["knn_search"] == "exact"
        assert stats["ray"]["seconds"]["knn_fanout"] > 0 and "driver_granularity" in stats["ray"]["seconds"]
        assert stats["resolution"] == pytest.approx(run_one["params"]["stats"]["resolution"], rel=0.05)
        store = Store(data, encoder=FakeEncoder(), create=False)
        try:
            score = ari(labels_of(store, run_one["id"]), labels_of(store, run_ray["id"]))
        finally:
            store.close()
        assert score >= 0.95, score
        assert run_ray["clusters"] >= 10

        runs = runner.invoke(cli, ["runs", "--data-dir", str(data)])
        assert runs.exit_code == 0 and "ray 2 nodes, 2 shards" in runs.output


def blob_store(path, db_url=None, n_per=150, k=6, d=24, seed=3):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    x = np.vstack([c + 0.25 * rng.standard_normal((n_per, d)).astype(np.float32) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    texts = [f"blob {i // n_per} point {i}" for i in range(len(x))]
    store = Store(path, db_url=db_url, encoder=LookupEncoder(texts, x, model_name="blobs"))
    store.ingest(texts)
    return store


def test_kmeans_on_ray_matches_one_machine(cluster, tmp_path):
    from clusterer.distributed.ray_cluster import cluster_on_ray

    with time_guard():
        store = blob_store(tmp_path / "d")
        try:
            one = store.cluster("kmeans", k=6)
            many = cluster_on_ray(store, "local", "kmeans", k=6)
            assert many.params["stats"]["ray"]["nodes"] == 2
            assert ari(labels_of(store, one.id), labels_of(store, many.id)) >= 0.95
        finally:
            store.close()


def test_leiden_on_ray_over_postgresql(cluster, tmp_path, pg_url):
    from clusterer.distributed.ray_cluster import cluster_on_ray

    with time_guard():
        store = blob_store(tmp_path / "d", db_url=pg_url)
        try:
            one = store.cluster()
            many = cluster_on_ray(store, "local")
            assert ari(labels_of(store, one.id), labels_of(store, many.id)) >= 0.95
        finally:
            store.close()


def test_other_methods_are_refused_on_ray(tmp_path):
    (tmp_path / "a.txt").write_text("one sentence\nanother one\n", encoding="utf-8")
    assert CliRunner().invoke(cli, ["ingest", str(tmp_path / "a.txt"), "--data-dir", str(tmp_path)]).exit_code == 0
    result = CliRunner().invoke(
        cli, ["cluster", "--data-dir", str(tmp_path), "--method", "community", "--ray", "local"]
    )
    assert result.exit_code != 0
    assert "--ray runs leiden and kmeans" in result.output
