"""Fast community detection on a thresholded neighbour graph.

Semantics (the reference is ``sentence_transformers.util.community_detection``; with the exact
neighbour graph the communities are identical, as sets and in list order):

1. Neighbourhoods ``N(i) = {j : sim(i, j) >= float32(threshold)}`` and the candidates
   ``|N(i)| >= min_size`` come from :mod:`clusterer.algorithms.neighbors`.
2. Candidates are visited in order of decreasing ``|N(i)|``. Ties are broken by ``tie_break``:

   * ``"position"`` (default, as sentence-transformers): lower position first. Deterministic,
     but under a permutation of the input equal-sized neighbourhoods may be visited in a
     different order.
   * ``"density"``: larger sum of similarities over ``N(i)`` first, then lower position. This
     depends only on the vectors, so the communities (as member sets) do not change when the
     input is permuted, short of exact ties in that sum.

3. A candidate whose centre is already taken is skipped. Otherwise its community is
   ``N(i)`` minus the points already taken; it is kept when that leaves at least ``min_size``
   points, and they are then marked taken. The centre is counted only if ``i`` is in ``N(i)``
   (it is, unless ``threshold`` exceeds its rounded self-similarity; then, as in
   sentence-transformers, the centre is added on top of the ``min_size`` members).
4. The kept communities are returned largest first; equal sizes keep the order in which they
   were accepted (Python's stable sort, as sentence-transformers).

Each :class:`Community` lists its centre first, then the other members by decreasing
similarity to the centre (ties: lower position first), with those similarities alongside.

Work is linear in the number of graph edges; memory is the graph plus one flag per point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clusterer.algorithms.neighbors import NeighborGraph, neighbor_graph


@dataclass(frozen=True)
class Community:
    """One community: ``members[0] == centre``; ``similarities[k]`` is sim(centre, members[k])."""

    centre: int
    members: list[int] = field(default_factory=list)
    similarities: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.members)


def candidate_order(graph: NeighborGraph, tie_break: str = "position") -> np.ndarray:
    """Indices into ``graph.centres`` in visiting order (see module docstring, rule 2)."""
    sizes = graph.list_sizes
    if tie_break == "position":
        return np.lexsort((graph.centres, -sizes))
    if tie_break == "density":
        mass = np.add.reduceat(graph.similarities.astype(np.float64), graph.lims[:-1]) if len(sizes) else np.zeros(0)
        return np.lexsort((graph.centres, -mass, -sizes))
    raise ValueError(f"tie_break must be 'position' or 'density', got {tie_break!r}")


def community_detection(graph: NeighborGraph, tie_break: str = "position") -> list[Community]:
    """Communities from a neighbour graph, largest first (semantics in the module docstring)."""
    min_size = graph.min_size
    taken = np.zeros(graph.n, dtype=bool)
    accepted: list[Community] = []
    lims = graph.lims
    for k in candidate_order(graph, tie_break).tolist():
        centre = int(graph.centres[k])
        if taken[centre]:
            continue
        a, b = lims[k], lims[k + 1]
        nbrs = graph.neighbors[a:b]
        free = ~taken[nbrs]
        members = nbrs[free]
        if len(members) < min_size:
            continue
        sims = graph.similarities[a:b][free]
        is_centre = members == centre
        if is_centre.any():
            centre_sim = float(sims[is_centre][0])
            others = ~is_centre
            members, sims = members[others], sims[others]
        else:
            centre_sim = 1.0
        taken[members] = True
        taken[centre] = True
        accepted.append(
            Community(
                centre=centre,
                members=[centre, *members.tolist()],
                similarities=[centre_sim, *sims.tolist()],
            )
        )
    return sorted(accepted, key=len, reverse=True)


def _normalize(embeddings) -> np.ndarray:
    """Rows scaled to unit norm by torch, exactly as sentence-transformers does before its
    threshold test (a numpy norm differs in the last ulp and would move pairs at the threshold)."""
    import torch

    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    return torch.nn.functional.normalize(x, p=2, dim=-1).numpy()


def detect_communities(
    embeddings,
    threshold: float = 0.75,
    min_size: int = 10,
    device: str = "auto",
    index=None,
    normalize: bool = True,
    tie_break: str = "position",
    batch_size: int | None = None,
    show_progress: bool = False,
) -> list[Community]:
    """Neighbour search (:func:`clusterer.algorithms.neighbors.neighbor_graph`) then :func:`community_detection`.

    With ``normalize`` the rows are L2-normalised in float32 exactly as sentence-transformers
    does (``torch.nn.functional.normalize``), so that results match its
    ``community_detection`` on the same input; pass ``normalize=False`` when the embeddings are
    already normalised and must be used as they are (e.g. those held by ``index``).
    """
    if len(embeddings) == 0:
        return []
    x = _normalize(embeddings) if normalize else np.ascontiguousarray(embeddings, dtype=np.float32)
    graph = neighbor_graph(
        x, threshold, min_size, device=device, index=index, batch_size=batch_size, show_progress=show_progress
    )
    return community_detection(graph, tie_break=tie_break)


def labels_from_communities(communities: list[Community], n: int) -> np.ndarray:
    """Label per point: the index of its community in ``communities``, -1 when unassigned."""
    labels = np.full(n, -1, dtype=np.int64)
    for k, community in enumerate(communities):
        labels[np.asarray(community.members, dtype=np.int64)] = k
    return labels
