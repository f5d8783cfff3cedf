"""Writing an upkeep plan: assignments, births, growth of sizes, centroids, term counts and
keywords of the clusters a batch touches, inside the batch's transaction; and :class:`Change`,
what the committed write changes in the in-memory run state. Deletions write through the same
pieces (:mod:`clusterer.service.deletions`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clusterer.algorithms import topics
from clusterer.service import incremental as inc
from storage import clusters as cq
from storage import sentences as sq


def vector(blob: bytes) -> np.ndarray:
    """A stored centroid as a float32 vector."""
    return np.frombuffer(blob, dtype=np.float32).copy()


@dataclass
class Change:
    """What a committed write changes in the in-memory state; ``apply`` runs after commit."""

    added: int = 0
    assigned: int = 0
    unassigned: int = 0
    born: int = 0
    centres: dict[int, np.ndarray] = field(default_factory=dict)
    centroids: dict[int, np.ndarray] = field(default_factory=dict)
    forget: set[int] = field(default_factory=set)
    mass: tuple[int, int] = (0, 0)
    terms: dict[str, int] = field(default_factory=dict)

    def apply(self, state: inc.RunState) -> dict[str, int]:
        state.n_sentences += self.added
        state.forget(self.forget)
        state.centres.update(self.centres)
        state.centroids.update(self.centroids)
        if state.term_mass is not None:
            state.term_mass = (state.term_mass[0] + self.mass[0], state.term_mass[1] + self.mass[1])
        for term, c in self.terms.items():
            if term in state.term_totals:
                state.term_totals[term] += c
        return {"assigned": self.assigned, "unassigned": self.unassigned, "new_clusters": self.born}


def keywords_for(
    session,
    state: inc.RunState,
    counts: dict[int, dict[str, int]],
    pending: dict[str, int],
    pending_mass: tuple[int, int],
) -> dict[int, dict[str, Any]]:
    """New keywords of the clusters in ``counts`` (their term counts after this change).

    c-TF-IDF needs the run's term mass (read once, then kept in ``state``) and the total over
    the run of each term that can make a top list. A term's total is at least its count in
    the clusters at hand, which bounds its score from above, so totals are read only for the
    terms that reach a top list under that bound, until every list holds only terms with known
    totals: the same keywords as with every total known, for a few reads instead of one per
    term. Totals are kept in ``state`` as committed values (``pending`` and ``pending_mass`` are
    this uncommitted change's share, already visible to ``session``).
    """
    if not counts:
        return {}
    if state.term_mass is None:
        occurrences, classes = cq.term_mass(session, state.run_id)
        state.term_mass = (occurrences - pending_mass[0], classes - pending_mass[1])
    mass = (state.term_mass[0] + pending_mass[0], state.term_mass[1] + pending_mass[1])
    cache = state.term_totals
    if len(cache) > inc.TERM_CACHE_MAX:
        cache.clear()
    result: dict[int, dict[str, Any]] = {}
    open_labels = set(counts)
    while open_labels:
        sub = {label: counts[label] for label in open_labels}
        totals = {t: cache[t] + pending.get(t, 0) for t in set().union(*sub.values()) if t in cache}
        wide = inc.keyword_scores(sub, totals, mass, top_n=3 * inc.KEYWORDS)
        unknown: set[str] = set()
        for label, kw in wide.items():
            top = kw["keywords"][: inc.KEYWORDS]
            if all(t in cache for t, _ in top):
                result[label] = {"keywords": top}
                open_labels.discard(label)
            else:
                unknown.update(t for t, _ in kw["keywords"] if t not in cache)
        if unknown:
            found = cq.term_totals(session, state.run_id, sorted(unknown))
            for term in unknown:
                cache[term] = found.get(term, 0) - pending.get(term, 0)
    return result


def write_batch(
    gather: Any, ids: np.ndarray, vectors: np.ndarray, texts: list[str], plan: inc.BatchPlan, max_seq: int
) -> Change:
    """Write a batch's plan: assignments, births, growth of sizes, centroids, terms and keywords."""
    session, state = gather.session, gather.state
    run_id = state.run_id
    relabelled = plan.apply_births(ids)
    labels, sims = plan.labels, plan.similarities
    cq.insert_assignments(
        session,
        run_id,
        ids.tolist(),
        [int(l) if l >= 0 else None for l in labels],
        [float(s) if l >= 0 and np.isfinite(s) else None for l, s in zip(labels, sims)],
    )
    if relabelled:
        moved = sorted(relabelled)
        cq.set_assignments(session, run_id, moved, [relabelled[i][0] for i in moved], [relabelled[i][1] for i in moved])
    change = Change(
        added=len(ids),
        assigned=int((labels >= 0).sum()) + len(relabelled),
        unassigned=int((labels < 0).sum()),
        born=len(plan.births),
    )
    text_of = dict(zip(ids.tolist(), texts))
    stored_members = [m for b in plan.births for m in b.members if m not in text_of]
    text_of.update(sq.texts_for(session, stored_members) if stored_members else {})
    counts: dict[int, dict[str, int]] = {}
    added_terms: Counter[str] = Counter()
    mass = [0, 0]
    for b in plan.births:
        born_counts = topics.term_counts([text_of.get(m, "") for m in b.members])
        cq.insert_clusters(
            session,
            run_id,
            [
                cq.ClusterRow(
                    label=b.label,
                    size=len(b.members),
                    centre_id=b.centre,
                    cohesion=b.cohesion,
                    keywords=[],
                    representatives=b.representatives,
                    centroid=b.centroid.tobytes(),
                )
            ],
        )
        cq.insert_terms(session, run_id, {b.label: born_counts})
        if b.parent is not None:
            cq.update_clusters(session, run_id, {b.label: {"parent_label": b.parent}})
        cq.record_event(
            session,
            run_id,
            b.label,
            "birth",
            len(b.members),
            None,
            {"incremental": True, "from_unassigned": b.from_unassigned},
        )
        counts[b.label] = born_counts
        added_terms.update(born_counts)
        mass[0] += sum(born_counts.values())
        mass[1] += 1 if born_counts else 0
        change.centroids[b.label] = b.centroid
        if b.centre_vector is not None:
            change.centres[b.label] = b.centre_vector
    growth = plan.growth()
    values: dict[int, dict[str, Any]] = {}
    events = []
    if growth:
        rows = gather.rows(growth)
        grown = np.concatenate(list(growth.values()))
        added = topics.count_terms([texts[p] for p in grown], labels[grown])
        current = cq.term_counts(session, run_id, list(added))
        cq.add_terms(session, run_id, added, current)
        for label, pos in growth.items():
            row = rows.get(label)
            if row is None:
                continue
            size = row.size + len(pos)
            values[label] = {"size": size}
            if state.rule != "community" and row.centroid:
                centroid = inc.grown_centroid(vector(row.centroid), row.size, vectors[pos])
                values[label]["centroid"] = centroid.tobytes()
                change.centroids[label] = centroid
            events.append((label, "growth", size, {"added": len(pos)}))
            extra = added.get(label, {})
            counts[label] = dict(Counter(current.get(label, {})) + Counter(extra))
            added_terms.update(extra)
            mass[0] += sum(extra.values())
            mass[1] += 1 if extra and not current.get(label) else 0
        values.update(_coarse_growth(gather, {l: len(p) for l, p in growth.items()}))
    for label, kw in keywords_for(session, state, counts, dict(added_terms), (mass[0], mass[1])).items():
        values.setdefault(label, {}).update(kw)
    cq.update_clusters(session, run_id, values)
    cq.record_events(session, run_id, events)
    run = cq.get_run(session, run_id)
    assert run is not None, "runs are never deleted and this batch upkeeps an existing one"
    cq.touch_run(
        session,
        run_id,
        n_sentences=run.n_sentences + len(ids),
        n_assigned=run.n_assigned + change.assigned,
        n_clusters=run.n_clusters + len(plan.births),
        max_seq=max(run.max_seq, max_seq),
    )
    change.mass, change.terms = (mass[0], mass[1]), dict(added_terms)
    return change


def _coarse_growth(gather: Any, added: dict[int, int]) -> dict[int, dict[str, Any]]:
    """New sizes of the coarse parents of grown fine clusters (runs with a hierarchy)."""
    parent_of = cq.parent_labels(gather.session, gather.state.run_id, added)
    if not parent_of:
        return {}
    by_parent: Counter[int] = Counter()
    for label, n in added.items():
        if label in parent_of:
            by_parent[parent_of[label]] += n
    rows = gather.rows(by_parent)
    return {p: {"size": rows[p].size + n} for p, n in by_parent.items() if p in rows}
