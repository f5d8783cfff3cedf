"""Near-duplicate groups: star groups over the threshold graph.

The rule (greedy by sequence order, no chaining): points are visited in their given order
(the store passes them in insertion order); a point not yet in a group starts a group made of
itself and every point not yet in a group whose cosine similarity to it is >= the threshold; a
group of one is dropped. So every member of a group is within the threshold of the group's
first member (its earliest sentence), which ``--delete-keep first`` keeps; two members may be
less similar to each other than the threshold, but a chain a~b~c never pulls c into a's group
unless c is itself within the threshold of a. Connected components of the threshold graph would
chain; this does not.

Neighbour lists come from a search of the points against themselves: exact (blocked matrix
products over the upper triangle) up to ``EXACT_MAX`` points, above that a FAISS
``IndexIVFFlat`` range search probing ``nprobe`` of
its ``~4 sqrt(n)`` lists (missed pairs are the only error; recall is measured in
``bench/duplicates.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EXACT_MAX = 50_000
DEFAULT_NPROBE = 16
QUERY_BLOCK = 4096
EXACT_BLOCK = 1024


@dataclass
class DuplicateGroup:
    """Positions of the members (first member first, the rest by decreasing similarity to it)
    and each member's similarity to the first (1.0 for the first itself)."""

    members: list[int]
    similarities: list[float]


@dataclass
class Neighbours:
    """CSR lists: the neighbours of point i are ``positions[lims[i]:lims[i+1]]`` (i itself may be
    among them or not)."""

    lims: np.ndarray
    positions: np.ndarray
    similarities: np.ndarray
    exact: bool = True


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d matrix of embeddings, got shape {x.shape}")
    return x


def nlist_for(n: int) -> int:
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // 39 or 1)))


def threshold_neighbours(
    x: np.ndarray,
    threshold: float,
    *,
    search: str = "auto",
    nprobe: int = DEFAULT_NPROBE,
    nlist: int | None = None,
    seed: int = 0,
) -> Neighbours:
    """Every pair of rows of ``x`` (L2-normalised) with inner product >= ``threshold``.

    ``search``: "exact", "approximate" (IVF) or "auto" (exact up to ``EXACT_MAX`` rows).
    """
    import faiss

    x = _as_matrix(x)
    n, d = x.shape
    if search not in ("auto", "exact", "approximate"):
        raise ValueError(f"search must be auto, exact or approximate, got {search!r}")
    if n == 0:
        return Neighbours(np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if search == "exact" or (search == "auto" and n <= EXACT_MAX):
        return _exact_neighbours(x, threshold)
    k = nlist or nlist_for(n)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, k, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = x if n <= 256 * k else x[np.sort(rng.choice(n, 256 * k, replace=False))]
    index.cp.seed = seed
    index.train(sample)
    params = faiss.SearchParametersIVF(nprobe=min(nprobe, k))  # type: ignore[call-arg]
    index.add(x)
    lims_parts, pos_parts, sim_parts = [np.zeros(1, np.int64)], [], []
    offset = 0
    for start in range(0, n, QUERY_BLOCK):
        block = x[start : start + QUERY_BLOCK]
        lims, sims, ids = index.range_search(block, float(threshold), params=params)
        lims_parts.append(lims[1:].astype(np.int64) + offset)
        offset += int(lims[-1])
        pos_parts.append(ids.astype(np.int64))
        sim_parts.append(sims.astype(np.float32))
    return Neighbours(np.concatenate(lims_parts), np.concatenate(pos_parts), np.concatenate(sim_parts), False)


def _exact_neighbours(x: np.ndarray, threshold: float, block: int = EXACT_BLOCK) -> Neighbours:
    """All pairs >= ``threshold`` by blocked matrix products over the upper triangle only (each
    pair computed once, mirrored), which is half the work of a range search of every row."""
    n = len(x)
    t = np.float32(threshold)
    rows, cols, sims = [], [], []
    for a in range(0, n, block):
        b = min(n, a + block)
        s = x[a:b] @ x[a:].T
        r, c = np.nonzero(s >= t)
        upper = c > r
        r, c = r[upper], c[upper]
        rows.append(r + a)
        cols.append(c + a)
        sims.append(s[r, c])
    r = np.concatenate(rows).astype(np.int64)
    c = np.concatenate(cols).astype(np.int64)
    v = np.concatenate(sims).astype(np.float32)
    src, dst, val = np.concatenate([r, c]), np.concatenate([c, r]), np.concatenate([v, v])
    order = np.argsort(src, kind="stable")
    lims = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=lims[1:])
    return Neighbours(lims, dst[order], val[order], True)


def star_groups(neighbours: Neighbours, order: np.ndarray | None = None) -> list[DuplicateGroup]:
    """Star groups of the threshold graph (see the module's rule), visiting points in ``order``
    (default 0..n-1); largest groups first, ties by the first member's place in ``order``."""
    lims, positions, sims = neighbours.lims, neighbours.positions, neighbours.similarities
    n = len(lims) - 1
    order = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    taken = np.zeros(n, dtype=bool)
    found: list[tuple[int, DuplicateGroup]] = []
    for p in order.tolist():
        if taken[p] or lims[p + 1] == lims[p]:
            continue
        nb = positions[lims[p] : lims[p + 1]]
        nb_sims = sims[lims[p] : lims[p + 1]]
        keep = (nb != p) & ~taken[nb]
        if not keep.any():
            continue
        nb, nb_sims = nb[keep], nb_sims[keep]
        by_sim = np.lexsort((rank[nb], -nb_sims))
        members = [p, *nb[by_sim].tolist()]
        taken[members] = True
        found.append((int(rank[p]), DuplicateGroup(members, [1.0] + [float(s) for s in nb_sims[by_sim]])))
    found.sort(key=lambda item: (-len(item[1].members), item[0]))
    return [g for _, g in found]


def duplicate_groups(
    x: np.ndarray, threshold: float, *, search: str = "auto", nprobe: int = DEFAULT_NPROBE, nlist: int | None = None
) -> list[DuplicateGroup]:
    """Near-duplicate star groups among the rows of ``x`` (in row order, the first row of a group
    being the earliest); see the module docstring."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between -1 and 1, got {threshold}")
    return star_groups(threshold_neighbours(x, threshold, search=search, nprobe=nprobe, nlist=nlist))


def group_pairs(groups: list[DuplicateGroup]) -> set[tuple[int, int]]:
    """Every unordered pair of positions that share a group, as (smaller, larger)."""
    out: set[tuple[int, int]] = set()
    for g in groups:
        m = sorted(g.members)
        for i, a in enumerate(m):
            for b in m[i + 1 :]:
                out.add((a, b))
    return out


def threshold_pairs(neighbours: Neighbours) -> set[tuple[int, int]]:
    """Every unordered pair (a < b) of the threshold graph."""
    rows = np.repeat(np.arange(len(neighbours.lims) - 1), np.diff(neighbours.lims))
    cols = neighbours.positions
    keep = rows < cols
    return set(zip(rows[keep].tolist(), cols[keep].tolist()))


def keep_one(groups: list[DuplicateGroup], keep: str, lengths: np.ndarray | list[int] | None = None) -> list[list[int]]:
    """Per group, the positions to remove so that one member stays: ``first`` keeps the first
    member, ``longest`` the member with the largest ``lengths`` (ties to the earlier member)."""
    out = []
    for g in groups:
        if keep == "first":
            kept = g.members[0]
        elif keep == "longest":
            if lengths is None:
                raise ValueError("keep='longest' needs the members' lengths")
            kept = max(g.members, key=lambda p: (lengths[p], -g.members.index(p)))
        else:
            raise ValueError(f"keep must be first or longest, got {keep!r}")
        out.append([p for p in g.members if p != kept])
    return out
