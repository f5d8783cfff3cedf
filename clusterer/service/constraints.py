"""Curation edits as constraints on a new labelling: arrays in, arrays out.

A user's merges, splits and names are kept by every later labelling of the store (a recluster,
a periodic re-optimisation) until they are undone. :func:`apply_constraints` takes the labels a
method (after id matching) gave sentences ``ids`` and returns them with the edits enforced,
judged against the labels the same sentences had before (``Constraints.previous``):

1. **Merges keep together.** Every sentence that was in an active merge's cluster ``A`` stays
   in ``A``, and a new cluster made mostly (more than half) of ``A``'s former members becomes
   ``A`` whole (its other members were clustered with them).
2. **Splits keep apart.** A new cluster holding former members of two or more parts of an
   active split keeps those of the part most represented in it; the others go back to their
   own part's id.
3. **Ids stay.** An edited id (a merge target, a split part, a named cluster) the new labelling
   lost, whose former members now lie mostly in a cluster with a fresh id, passes its id to that
   cluster, so its name and edits follow it.

The function is pure and deterministic; it never invents ids other than the edited ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Constraints:
    """Active edits: ``merged`` (target id -> the ids merged into it), ``apart`` (each active
    split's part ids), ``named`` (ids with a name); ``ids``/``labels`` the labels sentences had
    before the labelling being constrained (``ids`` ascending, -1 unassigned)."""

    merged: dict[int, list[int]] = field(default_factory=dict)
    apart: list[list[int]] = field(default_factory=list)
    named: set[int] = field(default_factory=set)
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def empty(self) -> bool:
        return not (self.merged or self.apart or self.named)

    @property
    def protected(self) -> set[int]:
        """Every id an edit refers to."""
        out = set(self.merged) | set(self.named)
        for parts in self.apart:
            out.update(parts)
        return out

    def previous(self, ids: np.ndarray) -> np.ndarray:
        """The former label of each of ``ids`` (-1: unassigned or not there before)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0 or len(ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[pos] == ids, self.labels[pos], -1).astype(np.int64)


def _majority(labels: np.ndarray, mask: np.ndarray) -> dict[int, float]:
    """For each label >= 0: the share of its members where ``mask`` holds."""
    ok = labels >= 0
    if not ok.any():
        return {}
    uniq, inverse, counts = np.unique(labels[ok], return_inverse=True, return_counts=True)
    hits = np.bincount(inverse, weights=mask[ok].astype(np.float64), minlength=len(uniq))
    return {int(u): float(h / c) for u, h, c in zip(uniq, hits, counts)}


def apply_constraints(labels: np.ndarray, ids: np.ndarray, constraints: Constraints | None) -> np.ndarray:
    """``labels`` (one per sentence of ``ids``, -1 unassigned) with the active edits enforced;
    a new array, the input is not changed. See the module's docstring for the rules."""
    out = np.asarray(labels, dtype=np.int64).copy()
    if constraints is None or constraints.empty or len(out) == 0:
        return out
    before = constraints.previous(ids)
    protected = constraints.protected
    # 1. merges: former members stay; clusters made mostly of them join
    for target in sorted(constraints.merged):
        was = before == target
        if not was.any():
            continue
        for label, share in _majority(out, was).items():
            if share > 0.5 and label != target and label not in protected:
                out[out == label] = target
        out[was] = target
    # 2. splits: parts meeting in one cluster go back to their own ids
    for parts in constraints.apart:
        part_set = [p for p in dict.fromkeys(int(p) for p in parts)]
        if len(part_set) < 2:
            continue
        of_part = np.isin(before, part_set)
        for label in np.unique(out[of_part & (out >= 0)]):
            here = (out == label) & of_part
            found, counts = np.unique(before[here], return_counts=True)
            if len(found) < 2:
                continue
            keep = int(label) if int(label) in part_set else int(found[np.lexsort((found, -counts))[0]])
            for part in found:
                if int(part) != keep:
                    out[here & (before == part)] = int(part)
    # 3. ids stay with their successor when that successor is a fresh id
    present = set(np.unique(out).tolist())
    known_before = set(np.unique(constraints.labels).tolist())
    for label in sorted(protected - present):
        was = before == label
        if not was.any():
            continue
        found, counts = np.unique(out[was & (out >= 0)], return_counts=True)
        if len(found) == 0:
            continue
        best = int(found[np.lexsort((found, -counts))[0]])
        if best not in known_before and best not in protected:
            out[out == best] = label
            present.discard(best)
            present.add(label)
    return out


def changed_labels(before: np.ndarray, after: np.ndarray) -> set[int]:
    """Labels whose membership differs between two labellings of the same sentences."""
    before, after = np.asarray(before), np.asarray(after)
    moved = before != after
    return {int(x) for x in np.concatenate([before[moved], after[moved]]) if x >= 0}


def constrain_result(result, ids: np.ndarray, label_of: dict[int, int], constraints: Constraints | None):
    """A method's ``result`` (raw labels, see :class:`clusterer.service.methods.Labels`) whose
    raw labels ``label_of`` maps to final ids, with the edits enforced: None when they change
    nothing, else ``(result, label_of, events)`` where the new result's raw labels *are* the
    final ids (``label_of`` the identity), the changed clusters' centres, centroids and
    similarities are left to be recomputed, coarse parents follow each cluster's largest former
    raw part, and one ``kept`` event per id an edit moved sentences into or out of."""
    from dataclasses import replace

    from clusterer.algorithms.matching import Event

    raw = np.asarray(result.labels, dtype=np.int64)
    final = np.full(len(raw), -1, dtype=np.int64)
    lookup = np.array(sorted(label_of), dtype=np.int64)
    if len(lookup):
        mapped = np.array([label_of[int(r)] for r in lookup], dtype=np.int64)
        ok = raw >= 0
        final[ok] = mapped[np.searchsorted(lookup, raw[ok])]
    if constraints is None or constraints.empty:
        return None
    after = apply_constraints(final, ids, constraints)
    if np.array_equal(after, final):
        return None
    touched = changed_labels(final, after)
    inverse = {v: k for k, v in label_of.items()}
    sims = np.asarray(result.similarities, dtype=np.float32).copy()
    sims[np.isin(after, list(touched))] = np.nan
    centres = {label_of[r]: c for r, c in result.centres.items() if r in label_of and label_of[r] not in touched}
    centroids = {label_of[r]: c for r, c in result.centroids.items() if r in label_of and label_of[r] not in touched}
    parents = None
    if result.parents and label_of:
        parents = {}
        for label in np.unique(after[after >= 0]).tolist():
            if label in inverse and label not in touched:
                parents[label] = result.parents[inverse[label]]
                continue
            found, counts = np.unique(raw[(after == label) & (raw >= 0)], return_counts=True)
            if len(found) == 0:  # members only from outliers: the topic of any raw cluster will do
                found, counts = np.array([min(label_of)]), np.array([1])
            parents[label] = result.parents[int(found[np.lexsort((found, -counts))[0]])]
    new = replace(result, labels=after, similarities=sims, centres=centres, centroids=centroids, parents=parents)
    size = dict(zip(*np.unique(after[after >= 0], return_counts=True)))
    events = [
        Event(int(label), "kept", int(size.get(label, 0)), [], {"constraint": True, "moved": int(moved)})
        for label in sorted(touched)
        if (moved := int(((after == label) != (final == label)).sum()))
    ]
    return new, {int(label): int(label) for label in size}, events


def load_constraints(session, ids: np.ndarray, labels: np.ndarray) -> Constraints:
    """The store's active edits, judged against ``labels`` of sentences ``ids`` (the labelling
    being replaced; -1 unassigned)."""
    from storage import curation as cur

    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    merged: dict[int, list[int]] = {}
    for m in cur.active_merges(session):
        merged.setdefault(int(m.target), []).extend(int(s) for s in m.sources)
    apart = [[int(c) for c in s.children] for s in cur.active_splits(session)]
    return Constraints(merged, apart, set(cur.names(session)), ids[order], labels[order])
