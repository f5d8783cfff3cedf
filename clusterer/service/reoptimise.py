"""Automatic re-optimisation: the run is clustered again, from its own membership, when the
store has grown enough that the granularity chosen for it may no longer be right.

Upkeep assigns each new batch under the run's rule with the run's resolution, which was chosen
for the store as it was. Growth changes what the right resolution is (the rule of
:mod:`clusterer.algorithms.granularity` fixes a tolerance, and the resolution that meets it
rises as clusters multiply), and new topics are absorbed by big neighbours rather than split
off. So once the store holds :data:`GROWTH` times the sentences the run was last optimised
on, the next ingest re-optimises: Leiden starts from the current membership (every sentence's
label, those upkeep assigned included) on the kNN graph kept by the run and its batches
(:mod:`clusterer.service.run_graph`: no new neighbour search over the store), and the run's
resolution rule is evaluated again on the grown graph (a resolution the user fixed stays fixed).

It also re-optimises once :data:`BORN_SHARE` of the run's sentences lie in clusters upkeep
founded since then (topics that arrive late): those were cut from a small pool of unassigned
sentences, not by the resolution rule on the graph that holds them. Between two such
re-optimisations the run grows by at least a third of itself, so their costs form a geometric
sum as well.

Why a growth factor: it is the drift bound that costs least and needs no tuning. Optimising at
sizes n, 2n, 4n, ... costs at most twice one run on the final store in total (a geometric sum),
and at any time the run in use was optimised on at least half of the sentences. Clusters that
persist keep their ids (the warm start and the id matching of :mod:`clusterer.service.runs`);
splits, merges, births and deaths are recorded as events of the new run, which records why it
was made (``params.stats.trigger``) and is listed by ``clusterer runs``.

Methods whose upkeep rule is not ``graph`` (community, k-means, agglomerative) are never
re-optimised automatically: their upkeep stays as it was.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from clusterer.service import methods

GROWTH = 2.0
"""Re-optimise once the run covers this many times the sentences it was last optimised on."""
BORN_SHARE = 0.25
"""... or once this share of its sentences lies in clusters upkeep founded since then."""


def optimised_size(stats: Mapping[str, Any]) -> int | None:
    """How many sentences the run was optimised on (older runs: its distinct points)."""
    for key in ("optimised_sentences", "distinct_points"):
        value = stats.get(key)
        if value:
            return int(value)
    return None


def due(method: str, params: Mapping[str, Any], n_sentences: int, run_id: int, born: int = 0) -> dict[str, Any] | None:
    """The trigger of a re-optimisation of a run covering ``n_sentences`` now, ``born`` of them
    in clusters upkeep founded since the run was made; None when nothing is due."""
    if methods.upkeep_rule(method) != "graph":
        return None
    base = optimised_size(params.get("stats") or {})
    if not base:
        return None
    growth = n_sentences / base
    trigger = {
        "by": "upkeep",
        "growth": round(growth, 3),
        "sentences": int(n_sentences),
        "optimised_sentences": int(base),
        "born_sentences": int(born),
        "previous_run": int(run_id),
    }
    if n_sentences >= GROWTH * base:
        return {**trigger, "rule": "growth", "reason": f"store grew {growth:.1f}x since the last optimisation"}
    if born >= BORN_SHARE * n_sentences and born > 0:
        share = born / n_sentences
        return {
            **trigger,
            "rule": "births",
            "reason": f"{share:.0%} of the sentences are in clusters founded since the last optimisation",
        }
    return None


def summary(trigger: dict[str, Any], before: int, after: int, events: list) -> dict[str, Any]:
    """What a re-optimisation did, for ingest reports: counts of fine-level events and a line."""
    fine = [e for e in events if (e.detail or {}).get("level") != "coarse"]
    kinds = Counter(e.kind for e in fine)
    splits = sum(1 for e in fine if e.kind == "split" and "from" in (e.detail or {}))
    merges = kinds.get("merge", 0)
    births = kinds.get("birth", 0)
    deaths = sum(1 for e in fine if e.kind == "death" and "merged_into" not in (e.detail or {}))
    parts = [f"{splits} split{'s' if splits != 1 else ''}", f"{merges} merge{'s' if merges != 1 else ''}"]
    if births:
        parts.append(f"{births} new")
    if deaths:
        parts.append(f"{deaths} gone")
    return {
        "action": "re-optimised",
        "reason": trigger["reason"],
        "previous_run": trigger["previous_run"],
        "clusters_before": before,
        "clusters_after": after,
        "splits": splits,
        "merges": merges,
        "births": births,
        "deaths": deaths,
        "message": f"re-optimised ({trigger['reason']}): {before} -> {after} clusters, " + ", ".join(parts),
    }


def reoptimise_if_due(store, *, progress=None) -> dict[str, Any] | None:
    """Re-optimise the latest run of ``store`` (a :class:`clusterer.api.Store`) when its drift
    bound is crossed; returns what was done (None when nothing was due).

    The new run is computed while readers keep the previous assignment and replaces it when
    it commits; sentences that arrive meanwhile (from another process) are assigned by upkeep
    to the run that is latest when they arrive.
    """
    from storage import clusters as cq

    with store.lock:  # decided and done under the writer lock: two writers never both re-optimise
        with store.db.read() as session:
            run = cq.latest_run(session)
            if run is None:
                return None
            params = dict(run.params or {})
            first = (params.get("stats") or {}).get("born_from_label")
            born = cq.sentences_in_clusters_from(session, run.id, int(first)) if first is not None else 0
            trigger = due(run.method, params, run.n_sentences, run.id, born)
            before = run.n_clusters
        if trigger is None:
            return None
        started = time.perf_counter()
        info = store.recluster(progress=progress, trigger=trigger)
    done = summary(trigger, before, info.clusters, store.events(info.id))
    done.update(run=info.id, seconds=round(time.perf_counter() - started, 3))
    return done
