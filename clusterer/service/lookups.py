"""Lookups: the cluster each of a batch of vectors would join under the latest run, nothing written.

A batch is answered with one index search (one matrix product over a flat index: at 100,000
sentences 1.6 ms a query for 32 queries against 30 ms for one alone) and one read of the labels
its neighbours hold; each row is then decided by the run's rule exactly as ingesting it alone
would (:mod:`clusterer.service.incremental`). A row's similarities may differ from those of a
search of that row alone in the last bits of a float32 (FAISS sums a batch in another order),
which the answers' six decimals hide but at a tie.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clusterer.service import cards as cards_
from clusterer.service import incremental as inc
from clusterer.service.runs import NoRunError
from clusterer.service.upkeep import Gather, graph_params, knn, range_neighbours
from storage import clusters as cq
from storage import curation as cur
from storage import sentences as sq

NEIGHBOURS = 10
"""Nearest stored sentences an answer shows."""
SCAN = 64
"""A lookup's one kNN scan; its neighbours above the threshold are all of them unless the
64th is still above it (then a range search runs too)."""

SEARCH_CHUNK = 256
"""Queries per index search at most (bounds the distance block FAISS allocates)."""


def answer_batch(store, vectors: np.ndarray, counts: list[int], caches: cards_.LookupCaches) -> list[dict[str, Any]]:
    """The answers of ``store.lookup_vectors``: for each row, the cluster it would join under the
    latest run with that cluster's card (``counts[r]`` members shown), the similarity, the votes
    and the nearest stored sentences. One index search and one read of labels, cluster rows,
    names and texts for the batch, less what ``caches`` hold: cards and labels while the store is
    unchanged, texts for good."""
    store.refresh()
    with store.reading(), store.db.read() as session:
        state = store.upkeep.state_for(session)
        if state is None or store.dimension is None:
            raise NoRunError("no clustering run yet: run `clusterer cluster` first")
        version = cards_.store_version(state, *store.cache.version)
        known = caches.labels.for_version(version)
        gather = Gather(session, state, store.lookup_index(), store.dimension, store.embedding_dtype, known)
        decisions = decide_batch(gather, vectors, SCAN)
        near = [[int(i) for i in d["near"][0][:NEIGHBOURS] if i >= 0] for d in decisions]
        every = sorted({i for ids in near for i in ids})
        near_known = gather.labels(every)
        wanted = {(d["label"], m) for d, m in zip(decisions, counts) if d["label"] >= 0}
        found = {key: c for key in wanted if (c := caches.cards.get(version, key)) is not None}
        missing = wanted - found.keys()
        rows = cq.clusters_by_label(session, state.run_id, {label for label, _ in missing})
        shown = [i for r in rows.values() for i in [*(r.representatives or []), r.centre_id] if i is not None]
        texts = caches.texts.read(every + shown, lambda ids: sq.texts_for(session, ids))
        names = cur.names(session, rows) if rows else {}
        for label, m in missing:
            if label in rows:
                members = cards_.members_of(cq.members(session, state.run_id, label, limit=m))
                found[(label, m)] = cards_.card(session, rows[label], members, texts=texts, names=names).to_dict()
                caches.cards.put(version, (label, m), found[(label, m)])
    out = []
    for d, m, ids in zip(decisions, counts, near):
        label, sim = d["label"], d["similarity"]
        card = found.get((label, m))
        answer = {
            "run_id": state.run_id,
            "method": state.method,
            "where": state.params.get("where"),
            "cluster": None if card is None else cards_.copy_card(card),
            "cluster_id": label if label >= 0 else None,
            "similarity": None if sim is None or not np.isfinite(sim) else round(float(sim), 6),
            "votes": d["votes"],
            "nearest": [
                {"id": i, "text": texts.get(i, ""), "similarity": round(float(s), 6), "cluster": near_known.get(i)}
                for i, s in zip(ids, d["near"][1])
            ],
        }
        if "share" in d:
            answer["share"] = round(float(d["share"]), 6)
        out.append(answer)
    return out


def search_batch(index, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`clusterer.service.upkeep.knn` of every row, in chunks of :data:`SEARCH_CHUNK`."""
    parts = [knn(index, vectors[s : s + SEARCH_CHUNK], k) for s in range(0, len(vectors), SEARCH_CHUNK)]
    if not parts:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])


def decide_batch(gather: Gather, vectors: np.ndarray, scan: int) -> list[dict[str, Any]]:
    """What ingesting each row of ``vectors`` alone would assign it to (nothing is written).

    Per row: ``label`` (-1 for none), ``similarity`` (to the centre on community runs, else to
    the centroid), ``votes`` (neighbours of that cluster counted), ``share`` (graph runs: its
    share of the kNN weight) and ``near``, the (ids, similarities) of the ``scan`` nearest
    stored sentences.
    """
    state, index = gather.state, gather.index
    vecs = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1))
    rule = state.rule
    graph = graph_params(state) if rule == "graph" else {"k": 0}
    k = graph["k"]
    ids, sims = search_batch(index, vecs, max(scan, k))
    out: list[dict[str, Any]] = [
        {"label": -1, "similarity": None, "votes": 0, "near": (ids[r], sims[r])} for r in range(len(vecs))
    ]
    if rule == "community":
        _community(gather, state, index, vecs, ids, sims, scan, out)
    elif rule == "graph":
        _graph(gather, vecs, ids, sims, graph, out)
    else:
        for r in range(len(vecs)):
            labels, lsims = inc.assign_to_centroids(gather.centroids(), vecs[r : r + 1])
            out[r].update(label=int(labels[0]), similarity=float(lsims[0]))
    return out


def _community(gather: Gather, state, index, vecs, ids, sims, scan: int, out: list[dict[str, Any]]) -> None:
    threshold = np.float32(state.param("threshold", 0.75))
    found = []
    for r in range(len(vecs)):
        if sims[r][-1] < threshold or index.ntotal <= scan:
            within = (ids[r] >= 0) & (sims[r] >= threshold)
            found.append((ids[r][within], sims[r][within]))
        else:  # more neighbours above the threshold than one scan returned
            found.extend(range_neighbours(index, vecs[r : r + 1], float(threshold)))
    label_of = gather.label_fn(gather.labels(np.concatenate([f[0] for f in found])))
    n_labels = [label_of(n_ids) for n_ids, _ in found]
    centres = gather.centres({int(l) for ls in n_labels for l in ls if l >= 0})
    for r, (labels, (_, n_sims)) in enumerate(zip(n_labels, found)):
        label, _, votes = inc.community_vote(centres, labels, n_sims, vecs[r], float(threshold))
        refs = dict(centres) if label in centres else gather.centroids([label])
        similarity = inc.similarities_to(refs, np.array([label]), vecs[r : r + 1])[0]
        out[r].update(label=label, votes=votes, similarity=similarity)


def _graph(gather: Gather, vecs, ids, sims, graph: dict[str, Any], out: list[dict[str, Any]]) -> None:
    k = graph["k"]
    keys, ksims = inc.merge_neighbours(ids[:, :k], sims[:, :k], vecs, np.zeros((0, vecs.shape[1]), np.float32), k)
    label_of = gather.label_fn(gather.labels(keys[keys >= 0]))
    n_labels = label_of(keys)
    labels, share = inc.graph_assign(keys, ksims, label_of, graph["min_similarity"])
    refs = gather.centroids({int(l) for l in labels})
    for r in range(len(vecs)):
        label = int(labels[r])
        out[r].update(
            label=label,
            share=float(share[r]),
            votes=int((n_labels[r] == label).sum()) if label >= 0 else 0,
            similarity=inc.similarities_to(refs, labels[r : r + 1], vecs[r : r + 1])[0],
        )
