"""The stored kNN graph of a run (clusterer.service.run_graph): save, append, load, damage."""

from __future__ import annotations

import numpy as np

from clusterer.service import run_graph as rg


def _rows(ids, k=3, base=0.9):
    ids = np.asarray(ids, np.int64)
    nbrs = np.stack([ids + 1 + j for j in range(k)], axis=1)
    sims = np.full((len(ids), k), base, np.float32)
    return ids, nbrs, sims


def test_save_append_load_round_trip(tmp_path):
    rg.save_graph(tmp_path, 7, *_rows([3, 1, 2]))
    rg.append_rows(tmp_path, 7, *_rows([5, 4], base=0.5))
    g = rg.load_graph(tmp_path, 7)
    assert g is not None and g.k == 3 and len(g) == 5
    assert g.ids.tolist() == [1, 2, 3, 4, 5]
    assert g.neighbors.dtype == np.int64 and g.sims.dtype == np.float32
    assert g.neighbors[0].tolist() == [2, 3, 4] and g.sims[3, 0] == np.float32(0.5)


def test_latest_row_wins_and_parts_of_other_k_are_padded(tmp_path):
    rg.save_graph(tmp_path, 1, *_rows([1, 2], k=2))
    rg.append_rows(tmp_path, 1, np.array([2]), np.array([[9, 8, 7]]), np.array([[0.3, 0.2, 0.1]], np.float32))
    g = rg.load_graph(tmp_path, 1)
    assert g is not None and g.k == 3
    assert g.neighbors.tolist() == [[2, 3, -1], [9, 8, 7]]
    assert g.sims[0, 2] == 0


def test_missing_or_damaged_parts(tmp_path):
    assert rg.load_graph(tmp_path, 3) is None
    rg.save_graph(tmp_path, 3, *_rows([1, 2]))
    rg.append_rows(tmp_path, 3, *_rows([4]))
    part = rg.graph_dir(tmp_path, 3) / "part-000001.npz"
    part.write_bytes(b"not a zip file")
    g = rg.load_graph(tmp_path, 3)
    assert g is not None and g.ids.tolist() == [1, 2]  # the damaged part's rows are missing
    (rg.graph_dir(tmp_path, 3) / "part-000000.npz").write_bytes(b"")
    assert rg.load_graph(tmp_path, 3) is None


def test_save_replaces_and_prunes_older_runs(tmp_path):
    for run in (1, 2, 3):
        rg.save_graph(tmp_path, run, *_rows([run]))
    assert rg.load_graph(tmp_path, 1) is None  # only the two most recent runs are kept
    assert rg.load_graph(tmp_path, 2) is not None
    rg.append_rows(tmp_path, 3, *_rows([10]))
    rg.save_graph(tmp_path, 3, *_rows([20]))
    g = rg.load_graph(tmp_path, 3)
    assert g is not None and g.ids.tolist() == [20]
    assert rg.append_rows(tmp_path, 3, *_rows([])) is None


def test_rows_keep_the_store_size_they_were_searched_at(tmp_path):
    rg.save_graph(tmp_path, 1, *_rows([1, 2]), at=100)
    rg.append_rows(tmp_path, 1, *_rows([3]), at=[150])
    rg.append_rows(tmp_path, 1, *_rows([4]))
    g = rg.load_graph(tmp_path, 1)
    assert g is not None and g.at is not None and g.at.tolist() == [100, 100, 150, 0]
    nbrs, _sims, missing, at = rg.align(g, np.array([1, 2, 3, 5]), 3)
    assert missing.tolist() == [False, False, False, True] and at.tolist() == [100, 100, 150, 0]
    assert nbrs[0].tolist() == [1, 2, -1]  # neighbours 2, 3 (positions 1, 2); 4 is outside the ids


def test_refine_takes_the_best_of_own_and_naming_rows():
    # row 0 was searched early: its neighbours are 1 and 2 at 0.5; rows 3 and 4 name it at 0.9
    nbrs = np.array([[1, 2], [0, 2], [0, 1], [0, 4], [0, 3]])
    sims = np.array([[0.5, 0.5], [0.5, 0.4], [0.5, 0.4], [0.9, 0.8], [0.9, 0.8]], np.float32)
    out_n, out_s = rg.refine(nbrs, sims, 2)
    assert sorted(out_n[0].tolist()) == [3, 4] and np.allclose(out_s[0], 0.9)
    assert out_n[3].tolist() == [0, 4]  # a current row stays as it is
