"""The Python API: a sentence store with clustering on top.

``Store`` mirrors the command line: ``Store.open(path)``, ``store.ingest(texts,
metadata)``, ``store.search(text, k)``, ``store.cluster(method, **params)`` (leiden by
default), ``store.clusters(level=...)``, ``store.cluster_info(id)`` and ``store.runs()``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from clusterer.errors import ClustererError, InvalidParameterError, UnknownClusterError
from clusterer.service import cards, curation_writer, incremental, methods, reoptimise
from clusterer.service import duplicates as dup_service
from clusterer.service import lookups as lookup_service
from clusterer.service import runs as run_service
from clusterer.service.batches import sentence_record
from clusterer.service.curation import Edit
from clusterer.service.runs import NoRunError
from clusterer.service.upkeep import Upkeep
from clusterer.service.views import ClusterInfo, Event, Member, RunInfo, event_from_row
from indexer.ingest import IngestReport
from indexer.sentence_store import SentenceStore
from storage import clusters as cq
from storage import curation as cur
from storage import filters
from storage import sentences as sq


class UnknownSentenceError(ClustererError):
    """No stored sentence with that id."""


LEVELS = ("fine", "coarse")


class Store(SentenceStore):
    """A sentence store that also runs and maintains clusterings.

    Sentences ingested after a run are assigned to it as they arrive (see
    :mod:`clusterer.service.incremental`), in the same transaction that stores them.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self.upkeep = Upkeep(self)
        self.lookup_caches = cards.LookupCaches()
        kwargs.setdefault("listener", self.upkeep)
        super().__init__(*args, **kwargs)

    def _run_state(self, session) -> incremental.RunState | None:
        return self.upkeep.state_for(session)

    def cluster(
        self,
        method: str | None = None,
        *,
        device: str | None = None,
        force: bool = False,
        progress=None,
        show_progress: bool = False,
        warm_start: bool = False,
        where: Any = None,
        graph_from: int | None = None,
        trigger: dict[str, Any] | None = None,
        **params: Any,
    ) -> RunInfo:
        """Cluster every stored sentence and store the run; returns the run's summary.

        ``method`` defaults to ``leiden`` (no k, no threshold: its granularity is chosen from the
        data); the methods, their parameters and defaults are listed by
        :func:`clusterer.service.methods.describe`. Parameters are checked before anything runs.
        ``warm_start`` starts leiden from the latest run's membership (what :meth:`recluster` does).
        ``where`` (a ``--where`` string, list of strings or dict; see :mod:`storage.filters`)
        clusters only the matching sentences; the run records it, and sentences ingested later
        join the run only when they match it. ``graph_from`` reuses that run's stored kNN graph
        (leiden; :mod:`clusterer.service.run_graph`) and ``trigger`` records why upkeep made the run.
        """
        spec = methods.get(method)
        spec.resolve(params)
        with self.lock:
            self.refresh()
            run_id, _ = run_service.run_clustering(
                self,
                spec.name,
                device=device or self._device,
                force=force,
                progress=progress,
                show_progress=show_progress,
                warm_start=warm_start,
                where=where,
                graph_from=graph_from,
                trigger=trigger,
                **params,
            )
        return self.run(run_id)

    def ingest_records(self, records, **kwargs: Any) -> IngestReport:
        """Store the records (see :meth:`SentenceStore.ingest_records`; ``ingest`` and
        ``ingest_file`` come here), then re-optimise the latest run when the store has outgrown
        it (:mod:`clusterer.service.reoptimise`); what that did is ``report.upkeep``."""
        report = super().ingest_records(records, **kwargs)
        done = reoptimise.reoptimise_if_due(self)
        if done is not None:
            report.upkeep = done
        return report

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

    def gauges(self) -> dict[str, Any]:
        """What a metrics scrape shows of the store: sentences and the latest finished run."""
        with self.db.read() as session:
            out: dict[str, Any] = {"sentences": sq.count_sentences(session)}
            run = cq.latest_run(session)
            if run is not None:
                out.update(
                    last_run_id=run.id,
                    last_run_clusters=run.n_clusters,
                    last_run_assigned=run.n_assigned,
                    last_run_finished=run.finished_at.timestamp() if run.finished_at else None,
                )
        return out

    def runs(self, limit: int = 50) -> list[RunInfo]:
        with self.db.read() as session:
            return [RunInfo.from_row(r) for r in cq.list_runs(session, limit)]

    @staticmethod
    def _children(session, run_id: int) -> dict[int, list[int]]:
        """Each coarse label's fine labels, largest first."""
        out: dict[int, list[int]] = {}
        for c in cq.clusters_of_run(session, run_id, level="fine"):
            if c.parent_label is not None:
                out.setdefault(c.parent_label, []).append(c.label)
        return out

    def clusters(self, run_id: int | None = None, *, level: str = "fine") -> list[ClusterInfo]:
        """Every cluster of a run at ``level`` ("fine" or "coarse"), largest first; runs of
        methods without a hierarchy have no coarse clusters."""
        if level not in LEVELS:
            raise InvalidParameterError(f"level must be fine or coarse, got {level!r}")
        with self.db.read() as session:
            run = self._run_row(session, run_id)
            rows = cq.clusters_of_run(session, run.id, level=level)
            children = self._children(session, run.id) if level == "coarse" else {}
            names = cur.names(session)
            return [cards.card(session, c, children=children.get(c.label), names=names) for c in rows]

    def cluster_info(
        self, cluster_id: int, *, run_id: int | None = None, limit: int = 20, offset: int = 0
    ) -> ClusterInfo:
        """One cluster with its members, most similar to the centre first."""
        with self.db.read() as session:
            run, cluster, children = self._cluster_row(session, run_id, cluster_id)
            rows = self._member_rows(session, run.id, cluster, children, offset, limit)
            return cards.card(session, cluster, cards.members_of(rows), children)

    def _cluster_row(self, session, run_id: int | None, cluster_id: int):
        """(run, cluster, child labels of a coarse cluster or None); UnknownClusterError if absent."""
        run = self._run_row(session, run_id)
        cluster = cq.get_cluster(session, run.id, cluster_id)
        if cluster is None:
            raise UnknownClusterError(f"no cluster {cluster_id} in run {run.id}")
        children = self._children(session, run.id).get(cluster.label) if cluster.level == "coarse" else None
        return run, cluster, children

    @staticmethod
    def _member_rows(session, run_id: int, cluster, children: list[int] | None, offset: int, limit: int | None):
        """Members of a fine cluster, or of every child of a coarse one."""
        if cluster.level == "coarse":
            return cq.members_of_labels(session, run_id, children or [], offset=offset, limit=limit)
        return cq.members(session, run_id, cluster.label, offset=offset, limit=limit)

    def export(self, run_id: int | None = None, batch: int = 5000, where: Any = None) -> Iterator[dict[str, Any]]:
        """Every sentence of a run (matching ``where``) with its cluster id (None when unassigned),
        its coarse cluster id (None when unassigned or the run has no hierarchy), similarity and
        the cluster's user label (``cluster_label``, None when it has none)."""
        with self.db.read() as session:
            run = self._run_row(session, run_id)
            parent_of = {c.label: c.parent_label for c in cq.clusters_of_run(session, run.id, level="fine")}
            names = cur.names(session)
            ids, labels, sims = cq.assignments_of_run(session, run.id)
            if where is not None:
                flt = filters.check_fields(session, where)
                if flt:
                    keep = np.isin(np.asarray(ids, dtype=np.int64), filters.filtered_ids(session, flt)).tolist()
                    ids = [v for v, k in zip(ids, keep) if k]
                    labels = [v for v, k in zip(labels, keep) if k]
                    sims = [v for v, k in zip(sims, keep) if k]
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch]
                rows = sq.get_sentences(session, chunk)
                for i, sid in enumerate(chunk):
                    s = rows.get(sid)
                    if s is None:
                        continue
                    sim = sims[start + i]
                    label = labels[start + i]
                    yield {
                        "id": sid,
                        "text": s.text,
                        "metadata": s.meta,
                        "cluster": label,
                        "similarity": None if sim is None else round(float(sim), 6),
                        "coarse_cluster": None if label is None else parent_of.get(label),
                        "cluster_label": None if label is None else names.get(label),
                    }

    # -- lookups -------------------------------------------------------------------

    def lookup(self, text: str, *, members: int = 5) -> dict[str, Any]:
        """Which cluster ``text`` would join under the latest run, without storing anything.

        Returns the cluster (or None), the similarity to its centre, how many of
        its members are above the run's threshold (community runs), keywords, a
        few members, and the nearest stored sentences.
        """
        vector = self.embed([text])[0]
        return self.lookup_vector(vector, members=members)

    def lookup_vector(self, vector: np.ndarray, *, members: int = 5) -> dict[str, Any]:
        return self.lookup_vectors(np.asarray(vector, dtype=np.float32)[None, :], members=members)[0]

    def lookup_vectors(self, vectors: np.ndarray, *, members: int | Sequence[int] = 5) -> list[dict[str, Any]]:
        """:meth:`lookup` of each row of ``vectors`` (``members``: one count for all or one per row),
        answered together: one index search, one read of labels, texts and clusters for the batch;
        each answer equals that of a lookup of its row alone."""
        vecs = np.asarray(vectors, dtype=np.float32)
        counts = [members] * len(vecs) if isinstance(members, int) else [int(m) for m in members]
        return lookup_service.answer_batch(self, vecs, counts, self.lookup_caches) if len(vecs) else []

    def cluster_of(self, sentence_id: int) -> dict[str, Any]:
        """The cluster of a stored sentence under the latest run, and under every earlier run."""
        with self.db.read() as session:
            row = sq.get_sentences(session, [sentence_id]).get(sentence_id)
            if row is None:
                raise UnknownSentenceError(f"no sentence with id {sentence_id}")
            run = self._run_row(session, None)
            current = cq.assignment_of(session, run.id, sentence_id)
            where = (run.params or {}).get("where")
            outside = bool(where) and not filters.matching_ids(session, [sentence_id], where)
            history = [
                {
                    "run_id": r.id,
                    "method": r.method,
                    "started_at": RunInfo.from_row(r).started_at,
                    "cluster": a.label,
                    "similarity": a.similarity,
                }
                for r, a in cq.assignment_history(session, sentence_id)
            ]
            cluster = None
            if current is not None and current.label is not None:
                c = cq.get_cluster(session, run.id, current.label)
                cluster = cards.card(session, c).to_dict() if c else None
            return {
                "sentence": sentence_record(row),
                "run_id": run.id,
                "cluster_id": None if current is None else current.label,
                "similarity": None if current is None else current.similarity,
                "pending": current is None and not outside,
                "where": where,
                "outside_filter": outside,
                "cluster": cluster,
                "history": history,
            }

    def members(self, cluster_id: int, *, offset: int = 0, limit: int = 50, run_id: int | None = None) -> list[Member]:
        """Members of a cluster (of its fine clusters, for a coarse one), most similar to the centre first."""
        with self.db.read() as session:
            run, cluster, children = self._cluster_row(session, run_id, cluster_id)
            return cards.members_of(self._member_rows(session, run.id, cluster, children, offset, limit))

    def unassigned(self, *, offset: int = 0, limit: int = 50, run_id: int | None = None) -> tuple[int, list[Member]]:
        """(how many, a page of) sentences the run left in no cluster."""
        with self.db.read() as session:
            run = self._run_row(session, run_id)
            total = cq.count_members(session, run.id, None)
            return total, cards.members_of(cq.members(session, run.id, None, offset=offset, limit=limit))

    def recluster(self, **kwargs: Any) -> RunInfo:
        """A full run with the latest run's method and parameters; ids carry over (leiden starts
        from the latest run's membership and reuses its stored kNN graph, so a new
        ``resolution`` costs no neighbour search)."""
        options = ("device", "force", "progress", "show_progress", "trigger")
        method, params = self.recluster_args(**{k: v for k, v in kwargs.items() if k not in options})
        extra = {k: kwargs[k] for k in options if k in kwargs}
        return self.cluster(method, **extra, **params)

    def recluster_args(self, **overrides: Any) -> tuple[str, dict[str, Any]]:
        """(method, parameters) of a recluster: the latest run's, ``overrides`` (not None) on top,
        with its filter, a warm start and its stored kNN graph."""
        with self.db.read() as session:
            run = self._run_row(session, None)
            spec = methods.get(run.method)
            params = {k: v for k, v in (run.params or {}).items() if k in spec.param_names}
            where = (run.params or {}).get("where")
        params.update({k: v for k, v in overrides.items() if v is not None})
        return spec.name, {**params, "warm_start": True, "where": where, "graph_from": run.id}

    def events(self, run_id: int) -> list[Event]:
        """Every event a run recorded."""
        with self.db.read() as session:
            return [event_from_row(r) for r in cq.events(session, run_id=run_id)]

    def history(self, cluster_id: int) -> list[Event]:
        """Births, growth, merges, splits and deaths of a cluster id, oldest first."""
        with self.db.read() as session:
            rows = cq.events(session, cluster_id)
            if not rows:
                raise UnknownClusterError(f"cluster {cluster_id} never existed")
            return [event_from_row(r) for r in rows]

    # -- curation -------------------------------------------------------------------

    def _curate(self, edit, *args: Any) -> Edit:
        with self.lock:
            self.refresh()
            done = edit(self, *args)
        with self.upkeep._lock:  # cached centroids and centres of the edited ids are stale
            self.upkeep.state = None
        return done

    def merge(self, cluster_ids: list[int]) -> Edit:
        """Merge fine clusters of the latest run into one with the largest's id; later runs and
        upkeep keep them together until :meth:`unmerge`."""
        return self._curate(curation_writer.merge, [int(i) for i in cluster_ids])

    def split(self, cluster_id: int, resolution: float | None = None) -> Edit:
        """Split a fine cluster of the latest run (Leiden on its members' kNN graph at
        ``resolution``, 1 by default); the parts get new ids and are kept apart by later runs."""
        return self._curate(curation_writer.split, int(cluster_id), resolution, self._device or "cpu")

    def unmerge(self, cluster_id: int) -> Edit:
        """Undo the newest merge into ``cluster_id``: its moved sentences go back to their ids."""
        return self._curate(curation_writer.unmerge, int(cluster_id))

    def label(self, cluster_id: int, text: str | None) -> Edit:
        """Name a cluster (the name stays on its id across runs); ``text=None`` removes it."""
        return self._curate(curation_writer.label, int(cluster_id), text)

    # -- near-duplicates (dups) ------------------------------------------------------

    def duplicates(
        self,
        threshold: float = 0.95,
        *,
        where: Any = None,
        limit: int | None = None,
        search: str = "auto",
        nprobe: int | None = None,
    ) -> dup_service.DuplicatesReport:
        """Groups of near-duplicate sentences (cosine >= ``threshold`` to the group's first,
        earliest member; no chaining), largest first, over the sentences matching ``where``.

        ``limit`` keeps the ``limit`` largest groups in ``report.items``; the counts cover all.
        Exact search up to 50,000 sentences, IVF range search (``nprobe``) above.
        """
        return dup_service.find_duplicates(self, threshold, where=where, limit=limit, search=search, nprobe=nprobe)

    def delete_duplicates(self, report: dup_service.DuplicatesReport, keep: str = "first") -> list[int]:
        """Delete every member but one of each group of ``report`` (``keep``: first or longest)
        through :meth:`delete`, so runs, sizes and keywords are updated; returns the ids removed."""
        doomed = [i for group in dup_service.deletion_plan(report, keep) for i in group]
        return self.delete(doomed) if doomed else []
