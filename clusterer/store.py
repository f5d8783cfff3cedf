"""The Python API: a sentence store with clustering on top.

``Store`` mirrors the command line: ``Store.open(path)``, ``store.ingest(texts,
metadata)``, ``store.search(text, k)``, ``store.cluster(method, **params)``,
``store.clusters()``, ``store.cluster_info(id)`` and ``store.runs()``.
"""

from __future__ import annotations

from typing import Any, Iterator

from clusterer import incremental
from clusterer import runs as run_service
from clusterer.errors import ClustererError
from clusterer.runs import NoRunError
from clusterer.views import ClusterInfo, Member, RunInfo
from indexer.store import SentenceStore
from storage import clusters as cq
from storage import sentences as sq


class UnknownClusterError(ClustererError):
    """No cluster with that id in the run."""


class Store(SentenceStore):
    """A sentence store that also runs and maintains clusterings.

    Sentences ingested after a run are assigned to it as they arrive (see
    :mod:`clusterer.incremental`), in the same transaction that stores them.
    """

    _state: incremental.RunState | None = None

    def _run_state(self, session) -> incremental.RunState | None:
        latest = cq.latest_run(session)
        if latest is None:
            self._state = None
        elif self._state is None or self._state.run_id != latest.id:
            self._state = incremental.load_state(session, self.dimension, self.embedding_dtype)
        return self._state

    def _on_insert(self, session, ids, vectors, texts, max_seq):
        state = self._run_state(session)
        if state is None:
            return None
        outcome, centres, centroids = incremental.update_batch(
            session, state, self.index, ids, vectors, texts, max_seq, self.dimension, self.embedding_dtype)
        return lambda: outcome.apply(state, ids, centres, centroids)

    def cluster(self, method: str = "community", *, device: str | None = None, force: bool = False,
                progress=None, show_progress: bool = False, **params: Any) -> RunInfo:
        """Cluster every stored sentence and store the run; returns the run's summary.

        community: ``threshold`` (0.75), ``min_size`` (10), ``nprobe`` for large stores;
        kmeans: ``k`` (50), ``seed`` (0); agglomerative: ``distance_threshold`` (1.5), ``linkage``.
        """
        with self.lock:
            self.refresh()
            run_id, _ = run_service.run_clustering(
                self, method, device=device or self._device, force=force, progress=progress,
                show_progress=show_progress, **params)
            self._state = None
        return self.run(run_id)

    def _run_row(self, session, run_id: int | None):
        run = cq.latest_run(session) if run_id is None else cq.get_run(session, run_id)
        if run is None:
            if run_id is None:
                raise NoRunError("no clustering run yet: run `clusterer cluster` first")
            raise NoRunError(f"no run with id {run_id}")
        return run

    def run(self, run_id: int | None = None) -> RunInfo:
        """A run's summary; the latest finished run by default."""
        with self.db.read() as session:
            return RunInfo.from_row(self._run_row(session, run_id))

    def runs(self, limit: int = 50) -> list[RunInfo]:
        with self.db.read() as session:
            return [RunInfo.from_row(r) for r in cq.list_runs(session, limit)]

    def _members(self, rows) -> list[Member]:
        return [Member(s.id, s.text, None if sim is None else round(float(sim), 6), s.meta) for s, sim in rows]

    def _info(self, session, cluster, members: list[Member] | None = None) -> ClusterInfo:
        wanted = list(cluster.representatives or [])
        if cluster.centre_id is not None:
            wanted.append(cluster.centre_id)
        texts = sq.texts_for(session, wanted)
        kw = cluster.keywords or []
        return ClusterInfo(
            id=cluster.label, run_id=cluster.run_id, size=cluster.size,
            keywords=[k[0] for k in kw], keyword_scores=[k[1] for k in kw],
            centre_id=cluster.centre_id, centre_text=texts.get(cluster.centre_id),
            cohesion=cluster.cohesion,
            representatives=[Member(i, texts.get(i, ""), None) for i in (cluster.representatives or []) if i in texts],
            members=members or [],
        )

    def clusters(self, run_id: int | None = None) -> list[ClusterInfo]:
        """Every cluster of a run, largest first."""
        with self.db.read() as session:
            run = self._run_row(session, run_id)
            return [self._info(session, c) for c in cq.clusters_of_run(session, run.id)]

    def cluster_info(self, cluster_id: int, *, run_id: int | None = None, limit: int = 20, offset: int = 0) -> ClusterInfo:
        """One cluster with its members, most similar to the centre first."""
        with self.db.read() as session:
            run = self._run_row(session, run_id)
            cluster = cq.get_cluster(session, run.id, cluster_id)
            if cluster is None:
                raise UnknownClusterError(f"no cluster {cluster_id} in run {run.id}")
            rows = cq.members(session, run.id, cluster_id, offset=offset, limit=limit)
            return self._info(session, cluster, self._members(rows))

    def export(self, run_id: int | None = None, batch: int = 5000) -> Iterator[dict[str, Any]]:
        """Every sentence of a run with its cluster id (None when unassigned) and similarity."""
        with self.db.read() as session:
            run = self._run_row(session, run_id)
            ids, labels, sims = cq.assignments_of_run(session, run.id)
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch]
                rows = sq.get_sentences(session, chunk)
                for i, sid in enumerate(chunk):
                    s = rows.get(sid)
                    if s is None:
                        continue
                    sim = sims[start + i]
                    yield {"id": sid, "text": s.text, "metadata": s.meta, "cluster": labels[start + i],
                           "similarity": None if sim is None else round(float(sim), 6)}
