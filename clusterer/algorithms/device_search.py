"""Neighbour searches as dense products on a torch device (a GPU, or the CPU in tests).

Two searches share one plan: the rows are cut into chunks sized from the device's free memory
(``torch.cuda.mem_get_info`` on CUDA, a share of the available RAM on the CPU), each chunk is
compared with every row in one matrix product, the chunk's selection (threshold mask or top-k)
runs on the device, and only the results are kept there; they are copied to the host once, at
the end. No Python loop runs per row.

* :func:`threshold_graph` -- the neighbour graph of community detection: every pair with
  ``sim >= float32(threshold)`` for the rows that have at least ``min_size`` of them, each list
  sorted by decreasing similarity, ties by lower position (as
  :class:`clusterer.algorithms.neighbors.NeighborGraph` wants).
* :func:`exact_knn` -- each row's ``k`` nearest neighbours by inner product.

On CUDA the product is screened in float16 (tensor cores), which moves an inner product of unit
vectors by at most :data:`SCREEN_MARGIN`: pairs clear of the threshold by more than the margin are
decided by the screen, and the few within it are recomputed in float32 before the test, so the
result is the float32 one. The kNN search keeps :data:`KNN_EXTRA` more candidates than asked from
the screen and ranks them by their float32 similarity. On the CPU everything runs in float32.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

SCREEN_MARGIN = 2e-3
"""Bound on |float16 product - float32 product| for unit vectors of any dimension: inputs
rounded to 11 bits move each product by at most 2**-10 of its size (so the sum by 2**-10 times
the norms' product, Cauchy-Schwarz), the float16 result adds half an ulp (2**-12 below 1) and the
float32 accumulation a few 1e-5; the margin is scaled by the largest squared norm."""
KNN_EXTRA = 16
"""Candidates kept from the float16 screen beyond ``k``, ranked again in float32."""
CPU_CHUNK_BYTES = 256 * 2**20
"""Upper bound of one chunk's working memory on the CPU (larger chunks gain nothing there)."""
CUDA_FREE_SHARE = 0.4
"""Share of the GPU's free memory one chunk's similarities and masks may take."""


def _available_ram() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
        return 4 * 2**30


def chunk_rows(n: int, device: torch.device, bytes_per_pair: float, limit: int | None = None) -> int:
    """Rows per chunk so that a chunk's ``rows x n`` working set (``bytes_per_pair`` each) fits:
    :data:`CUDA_FREE_SHARE` of the free GPU memory, or on the CPU a quarter of the available RAM
    capped at :data:`CPU_CHUNK_BYTES`. ``limit`` caps the result (a caller's batch size)."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = CUDA_FREE_SHARE * free
    else:
        budget = min(CPU_CHUNK_BYTES, _available_ram() / 4)
    rows = int(budget // max(1.0, bytes_per_pair * max(n, 1)))
    if limit is not None:
        rows = min(rows, int(limit))
    return max(1, min(rows, max(n, 1)))


def as_device_matrix(embeddings, device: str | torch.device) -> torch.Tensor:
    """A 2-d float32 tensor on ``device`` from a numpy array or a tensor (no copy when it already is one)."""
    import torch

    if isinstance(embeddings, torch.Tensor):
        x = embeddings.detach().to(device=device, dtype=torch.float32)
    else:
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))).to(device)
    if x.ndim == 1:
        x = x[None, :] if x.numel() else x.reshape(0, 0)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d array, got shape {tuple(x.shape)}")
    return x.contiguous()


def _screen(x: torch.Tensor, precision: str) -> tuple[torch.Tensor, float]:
    """The matrix the products are screened with and the margin that bounds its error."""
    import torch

    if precision == "auto":
        precision = "float16" if x.device.type == "cuda" else "float32"
    if precision == "float32":
        return x, 0.0
    if precision != "float16":
        raise ValueError(f"precision must be auto, float16 or float32, got {precision!r}")
    scale = float(torch.linalg.vector_norm(x, dim=1).max()) ** 2 if len(x) else 1.0
    return x.half(), SCREEN_MARGIN * max(scale, 1.0)


def _pair_dots(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, block: int = 1 << 20) -> torch.Tensor:
    """``sim(rows[p], cols[p])`` in float32, in blocks of pairs (on the device)."""
    import torch

    out = torch.empty(len(rows), dtype=torch.float32, device=x.device)
    for s in range(0, len(rows), block):
        out[s : s + block] = (x[rows[s : s + block]] * x[cols[s : s + block]]).sum(dim=1)
    return out


def threshold_graph(
    embeddings,
    threshold: float,
    min_size: int,
    device: str = "cpu",
    batch_size: int | None = None,
    precision: str = "auto",
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Neighbour lists of the candidates (see the module docstring) as host arrays
    ``(centres, counts, neighbours, similarities, n)``: centres increasing, each list in graph
    order (decreasing similarity, ties by lower position). ``batch_size`` caps the rows per chunk."""
    import torch
    from tqdm.auto import tqdm

    x = as_device_matrix(embeddings, device)
    n = len(x)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), n)
    if n == 0 or n < min_size:
        return empty
    screen, margin = _screen(x, precision)
    t = torch.tensor(threshold, dtype=torch.float32, device=x.device)
    low = t - margin if margin else t
    per_pair = screen.element_size() + 1 + (4 if margin else 0)
    rows_per_chunk = chunk_rows(n, x.device, per_pair, batch_size)
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode():
        for start in tqdm(range(0, n, rows_per_chunk), desc="Neighbour search", disable=not show_progress):
            scores = screen[start : start + rows_per_chunk] @ screen.T
            mask = scores >= low.to(scores.dtype) if margin else scores >= t
            cand = torch.nonzero(mask.sum(dim=1) >= min_size, as_tuple=True)[0]
            if not len(cand):
                continue
            r, c = torch.nonzero(mask[cand], as_tuple=True)
            values = scores[cand[r], c].float()
            del scores, mask
            rows = cand[r] + start
            if margin:
                # every pair the screen kept gets its float32 similarity (the test then decides
                # the pairs within the margin, and the lists are ordered by the exact values)
                values = _pair_dots(x, rows, c)
                kept = values >= t
                rows, c, values = rows[kept], c[kept], values[kept]
            # graph order within each row: decreasing similarity, ties by lower column (nonzero
            # gives columns in increasing order and both sorts are stable)
            order = torch.argsort(-values, stable=True)
            order = order[torch.argsort(rows[order], stable=True)]
            rows, c, values = rows[order], c[order], values[order]
            centres, counts = torch.unique_consecutive(rows, return_counts=True)
            enough = counts >= min_size
            if not bool(enough.all()):
                keep_pair = torch.repeat_interleave(enough, counts)
                c, values = c[keep_pair], values[keep_pair]
                centres, counts = centres[enough], counts[enough]
            if len(centres):
                parts.append((centres.to(torch.int32), counts.to(torch.int32), c.to(torch.int32), values))
    if not parts:
        return empty
    centres_h = torch.cat([p[0] for p in parts]).cpu().numpy().astype(np.int64)
    counts_h = torch.cat([p[1] for p in parts]).cpu().numpy().astype(np.int64)
    cols_h = torch.cat([p[2] for p in parts]).cpu().numpy().astype(np.int64)
    sims_h = torch.cat([p[3] for p in parts]).cpu().numpy()
    return centres_h, counts_h, cols_h, sims_h, n


def exact_knn(
    embeddings,
    k: int,
    device: str = "cpu",
    batch_size: int | None = None,
    precision: str = "auto",
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every row by inner product, self excluded: ``(ids int64,
    sims float32)`` on the host, most similar first, ties by lower position, ``-1`` padding.

    Screened in float16 on CUDA: each chunk keeps its ``k + 1 +`` :data:`KNN_EXTRA` best by the
    screen, which are ranked again by their float32 similarity."""
    import torch
    from tqdm.auto import tqdm

    x = as_device_matrix(embeddings, device)
    n = len(x)
    if n <= 1:
        return np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32)
    screen, margin = _screen(x, precision)
    take = min(n, k + 1 + (KNN_EXTRA if margin else 0))
    keep = min(n - 1, k)
    out_n = torch.empty((n, keep), dtype=torch.int64, device=x.device)
    out_s = torch.empty((n, keep), dtype=torch.float32, device=x.device)
    rows_per_chunk = chunk_rows(n, x.device, screen.element_size() * 2, batch_size)
    with torch.inference_mode():
        for start in tqdm(range(0, n, rows_per_chunk), desc="kNN search", disable=not show_progress):
            q = x[start : start + rows_per_chunk]
            scores = screen[start : start + rows_per_chunk] @ screen.T
            own = torch.arange(start, start + len(q), device=x.device)
            scores[torch.arange(len(q), device=x.device), own] = -torch.inf  # self is never a neighbour
            top = torch.topk(scores, take, dim=1, sorted=False)
            del scores
            cand = top.indices
            # float32 similarities: the product's own values, or after a float16 screen the
            # candidates ranked again by their float32 inner products
            sims = torch.bmm(x[cand], q[:, :, None])[:, :, 0] if margin else top.values
            sims = sims.masked_fill(cand == own[:, None], -torch.inf)
            # decreasing similarity, ties by lower position
            order = torch.argsort(cand, dim=1)
            cand, sims = torch.gather(cand, 1, order), torch.gather(sims, 1, order)
            order = torch.argsort(-sims, dim=1, stable=True)[:, :keep]
            out_n[start : start + len(q)] = torch.gather(cand, 1, order)
            out_s[start : start + len(q)] = torch.gather(sims, 1, order)
    nbrs, sims_h = out_n.cpu().numpy(), out_s.cpu().numpy()
    if keep < k:
        nbrs = np.concatenate([nbrs, np.full((n, k - keep), -1, np.int64)], axis=1)
        sims_h = np.concatenate([sims_h, np.zeros((n, k - keep), np.float32)], axis=1)
    return nbrs, sims_h
