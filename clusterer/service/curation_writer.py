"""Writing curation edits to the latest run: gather inputs, ask :mod:`clusterer.service.curation`
for the plan, store it (assignments, cluster rows, term counts, keywords, events, the edit's
record) in one transaction. Callers hold the writer lock (:class:`clusterer.api.Store` does)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from clusterer.algorithms import topics
from clusterer.errors import CurationError, UnknownClusterError
from clusterer.service import curation, methods
from clusterer.service import incremental as inc
from clusterer.service.curation import Edit, Part
from clusterer.service.runs import NoRunError
from storage import clusters as cq
from storage import curation as cur
from storage import sentences as sq


def _latest(session):
    run = cq.latest_run(session)
    if run is None:
        raise NoRunError("no clustering run yet: run `clusterer cluster` first")
    return run


def _fine_row(session, run, label: int, what: str):
    row = cq.get_cluster(session, run.id, int(label))
    if row is None:
        raise UnknownClusterError(f"no cluster {label} in run {run.id}")
    if row.level == "coarse":
        children = [c.label for c in cq.clusters_of_run(session, run.id) if c.parent_label == row.label]
        shown = ", ".join(map(str, children[:8])) + (", ..." if len(children) > 8 else "")
        raise CurationError(f"{label} is a coarse topic of run {run.id}; {what} its fine clusters ({shown}) instead")
    return row


def _row_values(part: Part) -> dict[str, Any]:
    r = part.row
    return {
        "size": r.size,
        "centre_id": r.centre_id,
        "cohesion": r.cohesion,
        "representatives": r.representatives,
        "centroid": r.centroid,
    }


def _assign(session, run_id: int, part: Part) -> None:
    cq.set_assignments(
        session, run_id, part.members.tolist(), [part.row.label] * len(part.members), part.similarities.tolist()
    )


def _keywords(session, run, labels: Sequence[int]) -> dict[int, list[str]]:
    """Recompute the c-TF-IDF keywords of ``labels`` from the stored term counts (written already)."""
    state = inc.RunState(run.id, run.method, dict(run.params or {}), n_sentences=run.n_sentences)
    from clusterer.service.upkeep_write import keywords_for

    counts = cq.term_counts(session, run.id, labels)
    found = keywords_for(session, state, {int(l): counts.get(int(l), {}) for l in labels}, {}, (0, 0))
    cq.update_clusters(session, run.id, found)
    return {label: [k[0] for k in kw["keywords"]] for label, kw in found.items()}


def _finish(session, run, clusters_delta: int) -> None:
    """Count the edit on the run (upkeep's caches of another process see the run changed)."""
    params = dict(run.params or {})
    params["edits"] = int(params.get("edits", 0)) + 1
    cq.touch_run(session, run.id, params=params, n_clusters=max(0, run.n_clusters + clusters_delta))


def _coarse_sizes(session, run_id: int, delta: Counter[int]) -> None:
    """Move sizes between coarse topics; a topic left empty is removed."""
    delta = Counter({p: d for p, d in delta.items() if d})
    if not delta:
        return
    rows = cq.clusters_by_label(session, run_id, delta)
    sizes = {p: rows[p].size + d for p, d in delta.items() if p in rows}
    cq.update_clusters(session, run_id, {p: {"size": s} for p, s in sizes.items() if s > 0})
    cq.delete_clusters(session, run_id, [p for p, s in sizes.items() if s <= 0])


def _replace_in_splits(session, old: set[int], new: Sequence[int]) -> None:
    """Active splits that keep ``old`` ids apart now keep ``new`` instead."""
    for split in cur.active_splits(session):
        children = [int(c) for c in split.children]
        if old & set(children):
            changed = [c for c in children if c not in old]
            changed += [n for n in new if n not in changed]
            cur.set_split_children(session, split.id, changed)


def _name(session, label: int) -> str | None:
    return cur.names(session, [label]).get(label)


def merge(store, ids: Sequence[int]) -> Edit:
    """Merge fine clusters of the latest run into the largest's id."""
    ids = curation.check_distinct(ids)
    with store.db.write() as session:
        run = _latest(session)
        rows = {i: _fine_row(session, run, i, "merge") for i in ids}
        parent_of = {i: rows[i].parent_label for i in ids}
        found = {i: np.asarray(cq.member_ids(session, run.id, i), np.int64) for i in ids}
        target = curation.merge_target({i: len(m) for i, m in found.items()})
        members = {i: found[i] for i in [target, *(i for i in ids if i != target)]}
        all_ids = np.concatenate(list(members.values()))
        x = sq.embeddings_for(session, all_ids.tolist(), store.dimension, store.embedding_dtype)
        counts = cq.term_counts(session, run.id, ids)
        centre = None
        centre_id = rows[target].centre_id
        if methods.upkeep_rule(run.method) == "community" and centre_id in set(members[target].tolist()):
            centre = (int(centre_id), x[int(np.flatnonzero(members[target] == centre_id)[0])])
        parent = parent_of[target]
        part, moved = curation.plan_merge(members, x, counts, parent=parent, centre=centre)
        sources = [i for i in members if i != target]
        _assign(session, run.id, part)
        cq.delete_clusters(session, run.id, sources)
        cq.add_terms(
            session,
            run.id,
            {target: curation.sum_counts([counts.get(s, {}) for s in sources])},
            {target: counts.get(target, {})},
        )
        cq.update_clusters(session, run.id, {target: _row_values(part)})
        keywords = _keywords(session, run, [target]).get(target, [])
        delta: Counter[int] = Counter()
        for s in sources:
            p = parent_of[s]
            if p is not None and parent is not None and p != parent:
                delta[p] -= len(members[s])
                delta[parent] += len(members[s])
        _coarse_sizes(session, run.id, delta)
        detail = {"curated": True, "absorbed": sources}
        cq.record_event(session, run.id, target, "merge", part.row.size, sources, detail)
        for s in sources:
            cq.record_event(session, run.id, s, "death", 0, [target], {"merged_into": target, "curated": True})
        cur.add_merge(session, run.id, target, sources, moved)
        _replace_in_splits(session, set(sources), [target])
        _finish(session, run, -len(sources))
        return Edit("merge", run.id, target, sources, part.row.size, keywords, _name(session, target))


def split(store, cluster_id: int, resolution: float | None = None, device: str = "cpu") -> Edit:
    """Split a fine cluster of the latest run into parts with new ids."""
    with store.db.write() as session:
        run = _latest(session)
        row = _fine_row(session, run, cluster_id, "split")
        ids = np.asarray(cq.member_ids(session, run.id, cluster_id), np.int64)
        x = sq.embeddings_for(session, ids.tolist(), store.dimension, store.embedding_dtype)
        text_of = sq.texts_for(session, ids.tolist())
        params = dict(run.params or {})
        parts = curation.plan_split(
            ids,
            x,
            [text_of.get(int(i), "") for i in ids],
            cq.max_label(session) + 1,
            cluster_id=cluster_id,
            resolution=resolution,
            min_size=int(params.get("min_size") or 1),
            parent=row.parent_label,
            seed=int(params.get("seed") or 0),
            device=device,
        )
        children = [p.row.label for p in parts]
        cq.delete_clusters(session, run.id, [cluster_id])
        cq.insert_clusters(session, run.id, [p.row for p in parts])
        cq.insert_terms(session, run.id, {p.row.label: p.terms for p in parts})
        for p in parts:
            _assign(session, run.id, p)
        keywords = _keywords(session, run, children)
        res = curation.DEFAULT_SPLIT_RESOLUTION if resolution is None else float(resolution)
        detail = {"curated": True, "into": children, "resolution": res}
        cq.record_event(session, run.id, cluster_id, "split", 0, children, detail)
        for p in parts:
            cq.record_event(
                session, run.id, p.row.label, "split", p.row.size, [cluster_id], {"from": cluster_id, "curated": True}
            )
        cur.add_split(session, run.id, cluster_id, children, res)
        merged_into = cur.last_active_merge(session, cluster_id)
        while merged_into is not None:  # a split cluster's merges end with its id
            cur.undo_merge(session, merged_into.id)
            merged_into = cur.last_active_merge(session, cluster_id)
        _replace_in_splits(session, {cluster_id}, children)
        _finish(session, run, len(parts) - 1)
        parts_out = [{"id": p.row.label, "size": p.row.size, "keywords": keywords.get(p.row.label, [])} for p in parts]
        return Edit(
            "split",
            run.id,
            cluster_id,
            children,
            len(ids),
            [],
            _name(session, cluster_id),
            {"resolution": res, "parts": parts_out},
        )


def unmerge(store, cluster_id: int) -> Edit:
    """Undo the newest merge into a cluster of the latest run."""
    with store.db.write() as session:
        run = _latest(session)
        row = _fine_row(session, run, cluster_id, "unmerge")
        merge_row = cur.last_active_merge(session, cluster_id)
        if merge_row is None:
            raise CurationError(f"cluster {cluster_id} has no merge to undo")
        moved = cur.merge_members(session, merge_row.id)
        members = np.asarray(cq.member_ids(session, run.id, cluster_id), np.int64)
        x = sq.embeddings_for(session, members.tolist(), store.dimension, store.embedding_dtype)
        parts = curation.plan_unmerge(members, x, moved, cluster_id, parent=row.parent_label)
        back = [p for p in parts if p.row.label != cluster_id]
        text_of = sq.texts_for(session, [int(i) for p in back for i in p.members])
        for p in back:
            p.terms = topics.term_counts([text_of.get(int(i), "") for i in p.members])
        current = cq.term_counts(session, run.id, [cluster_id])
        cq.subtract_terms(session, run.id, {cluster_id: curation.sum_counts([p.terms for p in back])}, current)
        kept = [p for p in parts if p.row.label == cluster_id]
        if kept:
            cq.update_clusters(session, run.id, {cluster_id: _row_values(kept[0])})
        else:
            cq.delete_clusters(session, run.id, [cluster_id])
        cq.insert_clusters(session, run.id, [p.row for p in back])
        cq.insert_terms(session, run.id, {p.row.label: p.terms for p in back})
        for p in parts:
            _assign(session, run.id, p)
        labels = [p.row.label for p in parts]
        keywords = _keywords(session, run, labels)
        restored = [p.row.label for p in back]
        cq.record_event(
            session,
            run.id,
            cluster_id,
            "unmerge",
            kept[0].row.size if kept else 0,
            restored,
            {"curated": True, "restored": restored},
        )
        for p in back:
            cq.record_event(
                session, run.id, p.row.label, "unmerge", p.row.size, [cluster_id], {"from": cluster_id, "curated": True}
            )
        cur.undo_merge(session, merge_row.id)
        _finish(session, run, len(back) - (0 if kept else 1))
        size = kept[0].row.size if kept else 0
        return Edit(
            "unmerge", run.id, cluster_id, restored, size, keywords.get(cluster_id, []), _name(session, cluster_id)
        )


def label(store, cluster_id: int, text: str | None) -> Edit:
    """Name a cluster (fine or coarse) of the latest run; ``text=None`` removes its name."""
    name = None if text is None else curation.check_name(text)
    with store.db.write() as session:
        run = _latest(session)
        row = cq.get_cluster(session, run.id, int(cluster_id))
        if row is None:
            raise UnknownClusterError(f"no cluster {cluster_id} in run {run.id}")
        if name is None:
            cleared = cur.clear_name(session, cluster_id)
            detail: dict[str, Any] = {"cleared": cleared}
        else:
            cur.set_name(session, cluster_id, name)
            detail = {}
        cq.record_event(session, run.id, cluster_id, "label", row.size, None, {"label": name, "curated": True})
        _finish(session, run, 0)
        return Edit("label", run.id, cluster_id, [], row.size, [k[0] for k in row.keywords or []], name, detail)
