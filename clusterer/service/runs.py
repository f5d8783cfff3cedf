"""Clustering runs over a store: load embeddings, run a method, plan what to store, store it.

A run is split into a pure plan and a small writer. :func:`plan_run` takes arrays and ids (the
embeddings, the method's labels, the texts, the previous run's groups) and returns a
:class:`RunPlan`: final labels with stable ids, cluster rows at every level, term counts and
lineage events; it touches no database. :func:`write_plan` stores a plan. :func:`run_clustering`
wires the two to the store: a run row is written first with status ``running`` so that a failed
or killed run is visible; the plan is written in one transaction at the end, so a run is either
complete or absent from lookups.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from clusterer.algorithms import topics
from clusterer.algorithms.matching import Event, groups_from_labels, match_clusters
from clusterer.errors import ClustererError
from clusterer.service import constraints as edits
from clusterer.service import methods
from clusterer.service import run_graph as rg
from clusterer.service.methods import GuardRailError, Labels  # noqa: F401  (re-exported)
from storage import clusters as cq
from storage import filters
from storage import sentences as sq

KEYWORDS_PER_CLUSTER = 10
REPRESENTATIVES = 3
MIN_JACCARD = 0.3

Progress = Callable[[str], None]


class NoRunError(ClustererError):
    """No clustering run has been made yet."""


def compute_labels(
    method: str,
    x: np.ndarray,
    params: dict[str, Any],
    device: str = "auto",
    force: bool = False,
    show_progress: bool = False,
    initial: np.ndarray | None = None,
    graph: Any = None,
) -> Labels:
    """Run one method over the embedding matrix ``x`` (rows L2-normalised) with resolved
    ``params``; ``graph`` (leiden) is a kNN graph over the rows to use instead of a new search."""
    return methods.get(method).compute(
        x, params, device=device, force=force, show_progress=show_progress, initial=initial, graph=graph
    )


# -- the plan ----------------------------------------------------------------------------------


@dataclass
class Previous:
    """The run a new run continues: its fine and coarse groups of sentence ids, and each
    sentence's fine label (``ids`` ascending) for a warm start."""

    run_id: int | None = None
    fine: dict[int, list[int]] = field(default_factory=dict)
    coarse: dict[int, list[int]] = field(default_factory=dict)
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def labels_for(self, ids: np.ndarray) -> np.ndarray:
        """The previous fine label of each of ``ids`` (-1: unassigned or new)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0 or len(ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[pos] == ids, self.labels[pos], -1)


@dataclass
class RunPlan:
    """Everything a run stores: per sentence (``ids`` order) its fine label (None: unassigned)
    and similarity; cluster rows (fine, then coarse); the fine clusters' term counts; events."""

    ids: np.ndarray
    labels: list[int | None]
    similarities: list[float | None]
    clusters: list[cq.ClusterRow]
    terms: dict[int, dict[str, int]]
    events: list[Event]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def fine(self) -> list[cq.ClusterRow]:
        return [c for c in self.clusters if c.level == "fine"]

    @property
    def coarse(self) -> list[cq.ClusterRow]:
        return [c for c in self.clusters if c.level == "coarse"]

    @property
    def n_assigned(self) -> int:
        return sum(1 for label in self.labels if label is not None)


def _cluster_row(
    x: np.ndarray,
    ids: np.ndarray,
    pos: np.ndarray,
    label: int,
    keywords: list,
    centroid: np.ndarray | None = None,
    centre_pos: int | None = None,
    level: str = "fine",
    parent: int | None = None,
) -> cq.ClusterRow:
    vectors = x[pos]
    if centroid is None:
        centroid = topics.normalized_centroid(vectors)
    reps = topics.representatives(x, pos, centroid, n=REPRESENTATIVES)
    if centre_pos is None:
        centre_pos = reps[0] if reps else int(pos[0])
    return cq.ClusterRow(
        label=label,
        size=len(pos),
        centre_id=int(ids[centre_pos]),
        cohesion=round(topics.cohesion(vectors), 6),
        keywords=[[t, round(s, 6)] for t, s in keywords],
        representatives=[int(ids[p]) for p in reps],
        centroid=np.asarray(centroid, dtype=np.float32).tobytes(),
        level=level,
        parent_label=parent,
    )


def positions_of(labels: np.ndarray) -> dict[int, np.ndarray]:
    """``{label: ascending positions}`` for every label >= 0, in one sort."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    uniq, starts = np.unique(sorted_labels, return_index=True)
    ends = np.append(starts[1:], len(labels))
    return {int(u): order[s:e] for u, s, e in zip(uniq, starts, ends) if u >= 0}


def describe_clusters(
    x: np.ndarray,
    ids: np.ndarray,
    texts: list[str],
    result: Labels,
    label_of: dict[int, int],
    positions: dict[int, np.ndarray] | None = None,
) -> tuple[list[cq.ClusterRow], dict[int, dict[str, int]]]:
    """Cluster rows (size, centre, cohesion, keywords, representatives) and term counts per final label."""
    positions = positions_of(result.labels) if positions is None else positions
    final = np.full(len(result.labels), -1, dtype=np.int64)
    for raw, label in label_of.items():
        final[positions[raw]] = label
    counts = topics.count_terms(texts, final) if len(texts) else {}
    keywords = topics.ctfidf_keywords(counts, top_n=KEYWORDS_PER_CLUSTER) if counts else {}
    rows = []
    for raw, label in label_of.items():
        pos = positions[raw]
        rows.append(
            _cluster_row(
                x, ids, pos, label, keywords.get(label, []), result.centroids.get(raw), result.centres.get(raw)
            )
        )
    return rows, counts


def similarities_for_storage(
    result: Labels, x: np.ndarray, positions: dict[int, np.ndarray] | None = None
) -> np.ndarray:
    """Each assigned point's similarity to its centre (community) or centroid (others)."""
    sims = result.similarities.astype(np.float32).copy()
    missing = (result.labels >= 0) & ~np.isfinite(sims)
    if missing.any():
        positions = positions_of(result.labels) if positions is None else positions
        for raw in np.unique(result.labels[missing]):
            pos = positions[int(raw)]
            centroid = topics.normalized_centroid(x[pos])
            sims[pos] = x[pos] @ centroid
    return sims


def _sum_counts(parts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for term, c in part.items():
            total[term] = total.get(term, 0) + c
    return total


def _coarse_row(
    x: np.ndarray, ids: np.ndarray, parts: list[np.ndarray], pos: np.ndarray, label: int, keywords: list
) -> cq.ClusterRow:
    """A coarse cluster's row from its children's positions ``parts`` (``pos``: all of them,
    ascending), reading the vectors one child at a time so that a large topic is never copied
    whole: the centroid is the normalised sum of the members' (unit) vectors, the cohesion its
    norm over the size, the centre and representatives the members closest to the centroid."""
    total = np.zeros(x.shape[1], dtype=np.float64)
    for part in parts:
        total += x[part].sum(axis=0, dtype=np.float64)
    norm = float(np.linalg.norm(total))
    centroid = (total / norm if norm > 0 else total).astype(np.float32)
    sims = np.empty(len(x), dtype=np.float32)
    for part in parts:
        sims[part] = x[part] @ centroid
    order = np.argsort(-sims[pos], kind="stable")[:REPRESENTATIVES]
    reps = [int(ids[pos[i]]) for i in order]
    return cq.ClusterRow(
        label=label,
        size=len(pos),
        centre_id=reps[0],
        cohesion=round(norm / len(pos), 6),
        keywords=[[t, round(s, 6)] for t, s in keywords],
        representatives=reps,
        centroid=centroid.tobytes(),
        level="coarse",
    )


def _coarse_level(
    x: np.ndarray,
    ids: np.ndarray,
    result: Labels,
    label_of: dict[int, int],
    fine_pos: dict[int, np.ndarray],
    fine_counts: dict[int, dict[str, int]],
    previous: Previous,
    next_label: int,
):
    """Coarse rows (keywords from the summed term counts of their children), their ids matched
    to the previous run's coarse clusters, their events, and each fine label's parent."""
    parents = result.parents or {}
    raw_coarse = sorted({parents[raw] for raw in label_of})
    children = {c: [raw for raw in label_of if parents[raw] == c] for c in raw_coarse}
    positions = {c: np.sort(np.concatenate([fine_pos[raw] for raw in children[c]])) for c in raw_coarse}
    match = match_clusters(previous.coarse, [ids[positions[c]] for c in raw_coarse], next_label, MIN_JACCARD)
    coarse_of = dict(zip(raw_coarse, match.labels))
    counts = {
        coarse_of[c]: _sum_counts([fine_counts.get(label_of[raw], {}) for raw in children[c]]) for c in raw_coarse
    }
    keywords = topics.ctfidf_keywords({k: v for k, v in counts.items() if v}, top_n=KEYWORDS_PER_CLUSTER)
    rows = [
        _coarse_row(
            x, ids, [fine_pos[raw] for raw in children[c]], positions[c], coarse_of[c], keywords.get(coarse_of[c], [])
        )
        for c in raw_coarse
    ]
    events = [replace(e, detail={**e.detail, "level": "coarse"}) for e in match.events]
    parent_of = {label_of[raw]: coarse_of[parents[raw]] for raw in label_of}
    return rows, events, parent_of


def plan_run(
    ids: np.ndarray,
    x: np.ndarray,
    texts: list[str],
    result: Labels,
    previous: Previous,
    next_label: int,
    constraints: edits.Constraints | None = None,
) -> RunPlan:
    """What a run stores, from the method's ``result`` over ``ids``/``x`` (one row per sentence)
    and ``texts`` (aligned; only assigned sentences' texts are read).

    Fine clusters keep the id of the previous run's fine cluster they overlap most (Jaccard
    >= ``MIN_JACCARD``), coarse clusters likewise among the previous coarse ones; other clusters
    get fresh ids from ``next_label`` up, fine first.
    """
    ids = np.asarray(ids, dtype=np.int64)
    positions = positions_of(result.labels)
    raw_labels = sorted(positions)
    match = match_clusters(previous.fine, [ids[positions[r]] for r in raw_labels], next_label, MIN_JACCARD)
    label_of = dict(zip(raw_labels, match.labels))
    events = list(match.events)
    constrained = edits.constrain_result(result, ids, label_of, constraints)
    if constrained is not None:
        result, label_of, kept = constrained
        positions = positions_of(result.labels)
        events += kept
    rows, counts = describe_clusters(x, ids, texts, result, label_of, positions)
    if result.parents is not None and label_of:
        after_fine = max([next_label - 1, *label_of.values()]) + 1
        coarse_rows, coarse_events, parent_of = _coarse_level(
            x, ids, result, label_of, positions, counts, previous, after_fine
        )
        rows = [replace(r, parent_label=parent_of[r.label]) for r in rows] + coarse_rows
        events += coarse_events
    sims = similarities_for_storage(result, x, positions)
    final = np.full(len(ids), -1, dtype=np.int64)
    for raw, label in label_of.items():
        final[positions[raw]] = label
    final_labels = [None if label < 0 else label for label in final.tolist()]
    final_sims = [None if label is None else s for s, label in zip(sims.tolist(), final_labels)]
    return RunPlan(ids, final_labels, final_sims, rows, counts, events, dict(result.info))


def write_plan(session, run_id: int, plan: RunPlan) -> None:
    """Store a plan's clusters, assignments, term counts and events in the run ``run_id``."""
    cq.insert_clusters(session, run_id, plan.clusters)
    cq.insert_assignments(session, run_id, plan.ids.tolist(), plan.labels, plan.similarities)
    cq.insert_terms(session, run_id, plan.terms)
    for ev in plan.events:
        cq.record_event(session, run_id, ev.label, ev.kind, ev.size, ev.related or None, ev.detail or None)


# -- the run -----------------------------------------------------------------------------------


def load_previous(session) -> Previous:
    """The latest finished run's groups (empty when there is none)."""
    run = cq.latest_run(session)
    if run is None:
        return Previous()
    p_ids, p_labels, _ = cq.assignments_of_run(session, run.id)
    ids = np.asarray(p_ids, np.int64)
    labels = np.asarray([-1 if l is None else l for l in p_labels], np.int64)
    order = np.argsort(ids, kind="stable")
    ids, labels = ids[order], labels[order]
    fine = {k: v.tolist() for k, v in groups_from_labels(ids, labels).items()}
    parent_of = {
        c.label: c.parent_label for c in cq.clusters_of_run(session, run.id, level="fine") if c.parent_label is not None
    }
    coarse: dict[int, list[int]] = {}
    for label, members in fine.items():
        if label in parent_of:
            coarse.setdefault(parent_of[label], []).extend(members)
    return Previous(run.id, fine, coarse, ids, labels)


def run_clustering(
    store,
    method: str | None = None,
    *,
    device: str = "auto",
    force: bool = False,
    progress: Progress | None = None,
    show_progress: bool = False,
    warm_start: bool = False,
    where: Any = None,
    graph_from: int | None = None,
    trigger: dict[str, Any] | None = None,
    compute: Callable[..., Labels] | None = None,
    **given: Any,
) -> tuple[int, float]:
    """Cluster every stored sentence (or those matching ``where``), store the run, and return its
    id and duration. A filtered run records its filter as ``params["where"]``.

    ``warm_start``: methods that can (leiden) start from the latest run's fine membership, so
    that clusters that persist keep their members and ids.

    ``graph_from``: the run whose stored kNN graph (:mod:`clusterer.service.run_graph`) leiden
    reuses, rows it lacks searched in the index, instead of a new search over every sentence.
    ``trigger``: why the run was made when upkeep made it (stored as ``params.stats.trigger``).
    A leiden run stores the graph it clustered for the next one. ``compute`` replaces
    :func:`compute_labels` (same arguments), e.g. to run the method on a Ray cluster.
    """
    spec = methods.get(method)
    params = spec.resolve(given)
    say = progress or (lambda _msg: None)
    # validate the filter before the run row exists; record it in params
    subset = None
    if where is not None:
        with store.db.read() as session:
            subset = filters.check_fields(session, where) or None
        if subset is not None:
            params["where"] = subset.to_strings()
    with store.db.write() as session:
        run_id = cq.create_run(session, spec.name, params).id
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    try:
        tick = time.perf_counter()
        with store.db.read() as session:
            max_seq = sq.max_seq(session)
            previous = load_previous(session)
            next_label = cq.max_label(session) + 1
            constraints = edits.load_constraints(session, previous.ids, previous.labels)
        say("loading embeddings")
        ids, x = store.embeddings(up_to_seq=max_seq)
        if subset is not None:  # only the matching sentences
            with store.db.read() as session:
                keep = np.isin(ids, filters.filtered_ids(session, subset, up_to_seq=max_seq))
            ids, x = ids[keep], x[keep]
        seconds["load"] = time.perf_counter() - tick
        tick = time.perf_counter()
        graph, graph_facts, graph_at = None, None, None
        if graph_from is not None and spec.stores_graph:
            graph, graph_facts, graph_at = rg.stored_knn(store, graph_from, ids, x, params)
            if graph_facts is not None:
                seconds["graph"] = time.perf_counter() - tick
                tick = time.perf_counter()
        initial = previous.labels_for(ids) if warm_start and spec.warm_start and previous.run_id else None
        say(f"clustering {len(ids):,} sentences ({spec.name})")
        result = (compute or compute_labels)(
            spec.name, x, params, device=device, force=force, show_progress=show_progress, initial=initial, graph=graph
        )
        del graph
        seconds["cluster"] = time.perf_counter() - tick
        tick = time.perf_counter()
        assigned = (result.labels >= 0) | np.isin(previous.labels_for(ids), list(constraints.merged))
        with store.db.read() as session:
            text_map = sq.texts_for(session, ids[assigned].tolist())
        seconds["load"] += time.perf_counter() - tick
        tick = time.perf_counter()
        say("keywords and representatives")
        texts_all = [text_map.get(int(i), "") if a else "" for i, a in zip(ids, assigned)]
        plan = plan_run(ids, x, texts_all, result, previous, next_label, constraints)
        seconds["keywords"] = time.perf_counter() - tick
        tick = time.perf_counter()
        say("saving")
        with store.db.write() as session:
            write_plan(session, run_id, plan)
            seconds["save"] = time.perf_counter() - tick
            stats = {
                **plan.stats,
                "coarse_clusters": len(plan.coarse),
                "optimised_sentences": len(ids),
                "born_from_label": cq.max_label(session) + 1,
                "seconds": {k: round(v, 4) for k, v in seconds.items()},
            }
            if graph_facts is not None:
                stats["graph"] = {"reused_from_run": graph_from, **graph_facts}
            if trigger is not None:
                stats["trigger"] = trigger
            cq.touch_run(session, run_id, params={**params, "stats": stats})
            cq.finish_run(
                session,
                run_id,
                n_sentences=len(ids),
                n_clusters=len(plan.fine),
                n_assigned=plan.n_assigned,
                max_seq=max_seq,
            )
    except BaseException as exc:
        with store.db.write() as session:
            cq.fail_run(session, run_id, f"{type(exc).__name__}: {exc}")
        raise
    if result.graph is not None:
        rg.save_run_graph(store, run_id, ids, result.graph, graph_at)
    return run_id, time.perf_counter() - started
