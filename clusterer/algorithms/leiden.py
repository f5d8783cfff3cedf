"""The symmetrised kNN graph as an igraph graph, and Leiden modularity communities on it.

The graph is built from numpy arrays without Python-level loops over edges: pairs are
canonicalised (low id, high id) as int32, deduplicated with one sort, and streamed to igraph as
pairs in one constructor call.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import igraph


@dataclass
class WeightedGraph:
    """An undirected igraph graph, its edges ``(m, 2)`` and weights (float64) in edge-id order."""

    graph: igraph.Graph
    edges: np.ndarray
    weights: np.ndarray
    n: int

    @property
    def edge_count(self) -> int:
        return len(self.weights)

    def strengths(self) -> np.ndarray:
        """Each node's total incident weight (a self-loop counts twice, as in modularity)."""
        out = np.bincount(self.edges[:, 0], weights=self.weights, minlength=self.n)
        out += np.bincount(self.edges[:, 1], weights=self.weights, minlength=self.n)
        return out


def symmetric_edges(neighbours: np.ndarray, similarities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges ``(m, 2)`` (low id first, in increasing order of the pair) of a kNN table,
    each pair once, with its similarity (the larger of the two directions); non-positive
    similarities are dropped. Ids are int32 below 2**31 points, similarities stay float32."""
    n, k = neighbours.shape
    index: type[np.signedinteger] = np.int32 if n < 2**31 else np.int64
    rows: np.ndarray = np.repeat(np.arange(n, dtype=index), k)
    cols: np.ndarray = neighbours.reshape(-1).astype(index)
    w = np.asarray(similarities, dtype=np.float32).reshape(-1)
    keep = (cols >= 0) & (w > 0) & (cols != rows)
    rows, cols, w = rows[keep], cols[keep], w[keep]
    del keep
    key = np.minimum(rows, cols).astype(np.int64)
    key *= n
    key += np.maximum(rows, cols)
    del rows, cols
    order = np.argsort(key)
    key, w = key[order], w[order]
    del order
    if not len(key):
        return np.zeros((0, 2), index), w
    first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    w = np.maximum.reduceat(w, first)
    key = key[first]
    edges = np.empty((len(key), 2), index)
    edges[:, 0] = key // n
    edges[:, 1] = key % n
    return edges, w


def build_graph(neighbours: np.ndarray, similarities: np.ndarray) -> WeightedGraph:
    """The undirected, weighted kNN graph as igraph wants it."""
    n = len(neighbours)
    edges, w = symmetric_edges(neighbours, similarities)
    return from_edges(edges, w.astype(np.float64), n)


EDGE_CHUNK = 1_000_000
"""Edges turned into Python pairs at a time. igraph's wheels read an edge list as Python pairs
(a numpy buffer is first unfolded into lists of lists), so the pairs are streamed to one
constructor call from a chained iterator: one chunk's pairs alive at a time, and no
``add_edges`` per chunk (each re-indexes every edge: 39 s for 13M edges in 2M chunks, against
1.0 s for 2.6M streamed, 0.19 GiB peak, where a list of tuples took 1.4 s and 0.62 GiB)."""


def _pairs(edges: np.ndarray):
    return itertools.chain.from_iterable(
        zip(edges[s : s + EDGE_CHUNK, 0].tolist(), edges[s : s + EDGE_CHUNK, 1].tolist())
        for s in range(0, len(edges), EDGE_CHUNK)
    )


def from_edges(edges: np.ndarray, weights: np.ndarray, n: int) -> WeightedGraph:
    import igraph

    g = igraph.Graph(n=n, edges=_pairs(edges), directed=False)
    return WeightedGraph(g, edges, weights, n)


def leiden(
    wg: WeightedGraph,
    resolution: float,
    seed: int,
    *,
    initial: np.ndarray | None = None,
    iterations: int = -1,
    node_weights: np.ndarray | None = None,
) -> np.ndarray:
    """Leiden modularity communities (igraph's C implementation), deterministic for a seed.

    ``node_weights`` are the strengths to use in the null model (an aggregated graph passes
    the summed strengths of the original nodes, self-loops included); by default each node's
    strength in ``wg``.
    """
    import igraph

    igraph.set_random_number_generator(random.Random(seed))
    try:
        part = wg.graph.community_leiden(
            objective_function="modularity",
            weights=wg.weights,
            resolution=resolution,
            n_iterations=iterations,
            initial_membership=None if initial is None else initial.tolist(),
            node_weights=None if node_weights is None else node_weights.tolist(),
        )
    finally:
        igraph.set_random_number_generator(random)
    return np.asarray(part.membership, dtype=np.int64)


DENSE_PAIRS = 1 << 24
"""Group pairs up to which :func:`contract` sums weights in a dense table instead of sorting."""


def contract(wg: WeightedGraph, membership: np.ndarray, groups: int) -> WeightedGraph:
    """The graph of ``groups`` super-nodes: edge weights between groups summed, edges inside
    a group kept as self-loops (so modularity of a merge of groups equals that of the original)."""
    edges = wg.edges
    a, b = membership[edges[:, 0]], membership[edges[:, 1]]
    ok = (a >= 0) & (b >= 0)
    lo, hi, w = np.minimum(a[ok], b[ok]), np.maximum(a[ok], b[ok]), wg.weights[ok]
    del a, b, ok
    key = lo.astype(np.int64) * groups + hi
    del lo, hi
    if groups * groups <= DENSE_PAIRS:
        # few groups: sum per pair in a dense table (bincount adds in edge order, as before;
        # every weight is positive, so a pair is present exactly where its sum is)
        summed = np.bincount(key, weights=w, minlength=groups * groups)
        present = np.flatnonzero(summed)
        pairs = np.stack(np.divmod(present, groups), axis=1)
        return from_edges(pairs, summed[present].astype(np.float64), groups)
    order = np.argsort(key, kind="stable")  # sums in edge order, as np.bincount would
    key, w = key[order], w[order]
    del order
    first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]])) if len(key) else np.zeros(0, np.int64)
    summed = np.add.reduceat(w, first) if len(key) else np.zeros(0, np.float64)
    pairs = np.stack(np.divmod(key[first], groups), axis=1)
    return from_edges(pairs, summed.astype(np.float64), groups)
