"""Ingesting batches that came from several callers in one store call, and telling each caller
what became of every text it sent: the id it is stored under, whether it was already there, and
the cluster the latest run put it in. The HTTP service coalesces concurrent requests this way;
each answer has the shape of ``clusterer ingest --json`` plus one entry per text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from indexer.normalize import normalize_text, text_hash
from indexer.sentence_store import IngestReport
from storage import clusters as cq
from storage import sentences as sq


@dataclass
class Batch:
    texts: list[str]
    metadata: list[dict[str, Any] | None] | None = None
    source: str = "<http>"


def sentence_record(row) -> dict[str, Any]:
    """A stored sentence as the API shows it (the ``sentence`` of ``clusterer which --json``)."""
    return {"id": row.id, "text": row.text, "metadata": row.meta, "source": row.source_file, "line": row.source_line}


def ingest_batches(store, batches: Sequence[Batch]) -> list[dict[str, Any]]:
    """Store every batch in one ``store.ingest`` call; one answer per batch, in order.

    A text sent twice (in one batch or in two coalesced batches) is added for its first
    occurrence and a duplicate for the others, as if the batches had come one after another.
    """
    texts = [t for b in batches for t in b.texts]
    metas = [m for b in batches for m in (b.metadata or [None] * len(b.texts))]
    report = store.ingest(texts, metas, source=batches[0].source if len(batches) == 1 else "<http>")
    added = set(report.ids)
    normal = [normalize_text(t) for t in texts]
    hashes = [text_hash(t) if t else None for t in normal]
    with store.db.read() as session:
        by_hash = sq.ids_by_hash(session, {h for h in hashes if h})
        run = cq.latest_run(session)
        placed = cq.assignments_for(session, run.id, sorted(added)) if run is not None else {}
    claimed: set[int] = set()
    answers, pos = [], 0
    for batch in batches:
        rows: list[dict[str, Any]] = []
        for _ in batch.texts:
            h = hashes[pos]
            pos += 1
            sid = by_hash.get(h) if h else None
            if h is None:
                rows.append({"id": None, "status": "empty", "cluster": None, "similarity": None})
            elif sid is not None and sid in added and sid not in claimed:
                claimed.add(sid)
                label, sim = placed.get(sid, (None, None))
                rows.append(
                    {
                        "id": sid,
                        "status": "added",
                        "cluster": label,
                        "similarity": None if sim is None else round(float(sim), 6),
                    }
                )
            else:
                rows.append({"id": sid, "status": "duplicate", "cluster": None, "similarity": None})
        answers.append(_answer(batch, rows, report, None if run is None else run.id))
    return answers


def _answer(batch: Batch, rows: list[dict[str, Any]], whole: IngestReport, run_id: int | None) -> dict[str, Any]:
    part = IngestReport(source=batch.source, read=len(rows), seconds=whole.seconds, upkeep=dict(whole.upkeep))
    for r in rows:
        if r["status"] == "added":
            part.added += 1
            key = "assigned" if r["cluster"] is not None else "unassigned"
            part.clustering[key] = part.clustering.get(key, 0) + 1
        elif r["status"] == "duplicate":
            part.duplicates += 1
        else:
            part.empty += 1
    return {
        "inputs": [part.to_dict()],
        "added": part.added,
        "duplicates": part.duplicates,
        "empty": part.empty,
        "invalid": 0,
        "run_id": run_id,
        "sentences": rows,
    }
