"""The sentence map of a run: a sample of its sentences placed in 2D, coloured by cluster."""

from __future__ import annotations

from typing import Any

import numpy as np

from clusterer.algorithms.projection import pca_2d, sample_positions
from storage import clusters as cq
from storage import sentences as sq

TEXT_CHARS = 120


def run_map(store, run_id: int | None = None, limit: int = 5000) -> dict[str, Any]:
    """Up to ``limit`` sentences of a run (all of them on small stores) with x, y and cluster."""
    with store.db.read() as session:
        run = store._run_row(session, run_id)
        ids, labels, _ = cq.assignments_of_run(session, run.id)
        total = len(ids)
        keep = sample_positions(total, limit)
        ids = [int(ids[i]) for i in keep]
        labels = [labels[i] for i in keep]
        vectors = (
            sq.embeddings_for(session, ids, store.dimension, store.embedding_dtype)
            if ids
            else np.zeros((0, store.dimension or 1), np.float32)
        )
        texts = sq.texts_for(session, ids)
    xy = pca_2d(vectors)
    points = [
        {
            "id": i,
            "x": round(float(x), 5),
            "y": round(float(y), 5),
            "cluster": label,
            "text": texts.get(i, "")[:TEXT_CHARS],
        }
        for i, (x, y), label in zip(ids, xy.tolist(), labels)
    ]
    return {"run_id": run.id, "total": total, "sampled": len(points), "projection": "pca", "points": points}
