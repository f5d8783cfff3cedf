"""Choosing the Leiden resolution from the data.

Modularity at resolution ``g`` merges two clusters ``a`` and ``b`` when the kNN weight between
them exceeds ``g`` times what the null model expects, ``vol_a * vol_b / 2m``. For clusters of
comparable volume that expectation is ``vol_a / C`` where ``C = 1 / sum_c (vol_c / 2m)**2`` is
the effective number of clusters (the inverse Simpson index of the volumes, the very term
modularity subtracts). So at resolution ``g`` a partition with ``C`` effective clusters keeps
two clusters apart only while each sends less than about ``g / C`` of its kNN weight to the
other. A fixed ``g`` therefore means a leak tolerance that shrinks as clusters multiply: right
for a few broad topics, far too strict for 150 fine intents (the resolution limit).

The rule fixes the tolerance instead of the resolution: it picks the resolution ``g*`` whose
partition satisfies ``g* / C(g*) = LEAK`` (a self-consistent fixed point; ``C`` grows with
``g`` slower than ``g`` itself, so there is one crossing, found by bisection in log ``g``).
In words: clusters are groups of sentences that send less than ``LEAK`` of their neighbour
weight to any single other group. The resolution never goes below 1 (plain modularity, which
merges only clusters joined by more weight than random wiring would give them): the rule
exists to lift modularity's resolution limit where there are many clusters, and below 1 the
fixed point degenerates (one cluster at ``g = LEAK`` is always a fixed point). It does not depend on the number of sentences (only
volume shares enter) nor on how many clusters there are, which is exactly what the corpora
differ in.

For speed the bisection runs on the graph contracted by a finer partition (modularity of a
merge of groups is the same on the contracted graph, self-loops carrying the weight inside
each group), so only one or two Leiden passes touch the full graph.
"""

from __future__ import annotations

import math

import numpy as np

from clusterer.algorithms.leiden import WeightedGraph, contract, leiden

LEAK = 0.1
"""Largest share of a cluster's kNN weight that may go to one other cluster (see the module docstring)."""
START_RESOLUTION = 16.0
MIN_RESOLUTION = 1.0
"""Standard modularity: below it, clusters joined by less weight than random wiring would give
them get merged, which no reading of the data supports; the rule only ever raises the resolution."""
BISECTION_STEPS = 12


def effective_clusters(labels: np.ndarray, strength: np.ndarray) -> float:
    """Inverse Simpson index of the clusters' volume shares (``labels`` >= 0)."""
    ok = labels >= 0
    vol = np.bincount(labels[ok], weights=strength[ok])
    total = vol.sum()
    if total <= 0:
        return 1.0
    p = vol / total
    return float(1.0 / np.sum(p * p))


def choose_resolution(
    wg: WeightedGraph,
    strength: np.ndarray,
    seed: int,
    *,
    leak: float = LEAK,
    start: float = START_RESOLUTION,
    iterations: int = -1,
) -> tuple[float, np.ndarray, dict]:
    """The fixed-point resolution and its partition of ``wg``'s nodes, with the values compared.

    Returns ``(resolution, labels, scores)``; ``scores["tried"]`` lists every resolution tried
    with its effective and actual number of clusters.
    """
    tried: list[dict] = []

    def record(res: float, labels: np.ndarray, where: str) -> float:
        c = effective_clusters(labels, strength)
        tried.append(
            {
                "resolution": round(res, 6),
                "effective_clusters": round(c, 2),
                "clusters": int(labels.max(initial=-1) + 1),
                "graph": where,
            }
        )
        return math.log(res) - math.log(leak * c)

    base_res = start
    base = leiden(wg, base_res, seed, iterations=iterations)
    while record(base_res, base, "full") < 0 and base_res < 1e6:
        base_res = 4 * leak * effective_clusters(base, strength)
        base = leiden(wg, base_res, seed, initial=base, iterations=iterations)
    groups = int(base.max()) + 1
    small = contract(wg, base, groups)
    node_w = np.bincount(base, weights=strength, minlength=groups)

    def at(res: float) -> tuple[float, np.ndarray]:
        part = leiden(small, res, seed, node_weights=node_w)
        return record(res, part[base], "contracted"), part

    lo, hi = math.log(MIN_RESOLUTION), math.log(base_res)
    f_lo, part_lo = at(MIN_RESOLUTION)
    if f_lo >= 0:
        chosen, part = MIN_RESOLUTION, part_lo
    else:
        chosen, part = base_res, np.arange(groups)
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            f_mid, part_mid = at(math.exp(mid))
            if f_mid >= 0:
                hi, chosen, part = mid, math.exp(mid), part_mid
            else:
                lo = mid
            if hi - lo < math.log(1.1):
                break
    return chosen, part[base], {"rule": "leak", "leak": leak, "tried": tried}
