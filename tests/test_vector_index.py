"""VectorIndex units, atomic saves, and damaged index files detected and rebuilt."""

from __future__ import annotations

import os

import numpy as np
import pytest

from indexer import batch_search
from indexer import vector_index as vi
from indexer.sentence_store import INDEX_FILE, SentenceStore
from indexer.vector_index import IndexFileError, VectorIndex, checksum_bytes, load_index, write_atomic
from storage import sentences as q

DIM = 16


def unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _make(kind, rng, n=2000):
    vectors = unit(rng, n)
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    index = VectorIndex.flat(DIM) if kind == "flat" else VectorIndex.ivf(DIM, vectors, nlist=16)
    if kind == "ivf":
        index.set_nprobe(16)  # exhaustive, so results are exact
    index.add(ids, vectors)
    return index, ids, vectors


def test_batched_ivf_range_search_matches_faiss_on_the_same_probes():
    rng = np.random.default_rng(3)
    index, ids, vectors = _make("ivf", rng)
    index.set_nprobe(4)  # not exhaustive: both must probe the same lists
    index.remove(ids[:50])
    queries = vectors[rng.choice(len(vectors), batch_search.RANGE_MIN_QUERIES + 8, replace=False)]
    lims, sims, got_ids = index.range_search(queries, 0.5)
    ref_lims, ref_sims, ref_ids = index.index.range_search(queries, 0.5)
    for j in range(len(queries)):
        got = dict(zip(got_ids[lims[j] : lims[j + 1]].tolist(), sims[lims[j] : lims[j + 1]].tolist()))
        ref = dict(
            zip(ref_ids[ref_lims[j] : ref_lims[j + 1]].tolist(), ref_sims[ref_lims[j] : ref_lims[j + 1]].tolist())
        )
        assert set(got) == set(ref) and not set(got) & set(ids[:50].tolist())
        assert all(abs(got[i] - ref[i]) < 1e-5 for i in got)
    assert lims[-1] > len(queries)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_add_search_remove_ids(kind):
    rng = np.random.default_rng(0)
    index, ids, vectors = _make(kind, rng)
    assert index.ntotal == len(ids)
    assert index.is_exact == (kind == "flat")
    assert index.kind.startswith("Flat" if kind == "flat" else "IVFFlat")
    assert sorted(index.ids().tolist()) == ids.tolist()

    res = index.search(vectors[[5, 77]], 4)
    assert res.ids.shape == (2, 4)
    assert res.ids[0, 0] == ids[5] and res.ids[1, 0] == ids[77]
    assert res.similarities[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(res.similarities, axis=1) <= 1e-6)  # most similar first
    exact = vectors @ vectors[5]
    assert np.allclose(np.sort(exact)[::-1][:4], res.similarities[0], atol=1e-5)

    lims, sims, rids = index.range_search(vectors[5], 0.5)
    expected = set(ids[exact >= 0.5].tolist())
    got = set(rids[lims[0] : lims[1]].tolist())
    # the boundary may round either way
    assert expected - got <= set(ids[np.abs(exact - 0.5) < 1e-5].tolist())
    assert got >= {int(ids[5])}
    assert np.all(sims >= 0.5 - 1e-5)

    assert index.remove([ids[5], ids[6], 123456789]) == 2
    assert index.ntotal == len(ids) - 2
    assert ids[5] not in index.ids() and ids[6] not in index.ids()
    res = index.search(vectors[5], 1)
    assert res.ids[0, 0] != ids[5]
    assert index.remove([]) == 0

    got_ids, got_vec = index.vectors()
    assert got_ids.tolist() == sorted(set(ids.tolist()) - {ids[5], ids[6]})
    assert np.allclose(got_vec[0], vectors[0], atol=1e-6)


def test_search_k_clamped_and_empty():
    index = VectorIndex.flat(DIM)
    assert index.ntotal == 0 and index.ids().tolist() == []
    rng = np.random.default_rng(1)
    v = unit(rng, 3)
    index.add(np.array([7, 8, 9]), v)
    res = index.search(v[0], 50)
    assert res.ids.shape == (1, 3)
    assert sorted(res.ids[0].tolist()) == [7, 8, 9]


def test_for_size_picks_type():
    rng = np.random.default_rng(2)
    sample = unit(rng, 1500)
    assert VectorIndex.for_size(DIM, 100, None, flat_max=300).is_exact
    assert VectorIndex.for_size(DIM, 1500, sample[:500], flat_max=300).is_exact  # sample too small
    ivf = VectorIndex.for_size(DIM, 1500, sample, flat_max=300)
    assert ivf.kind.startswith("IVFFlat")


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    rng = np.random.default_rng(3)
    index, ids, vectors = _make(kind, rng, n=1200)
    path = tmp_path / "sub" / "index.faiss"
    checksum = index.save(path)
    assert checksum == checksum_bytes(path.read_bytes())
    loaded = load_index(path, checksum)
    assert loaded.dimension == DIM and loaded.ntotal == index.ntotal
    assert loaded.kind == index.kind
    assert sorted(loaded.ids().tolist()) == ids.tolist()
    a, b = index.search(vectors[:3], 5), loaded.search(vectors[:3], 5)
    assert np.array_equal(a.ids, b.ids)
    # removal still works on a loaded IVF (direct map survives the round trip)
    assert loaded.remove([ids[0]]) == 1
    with pytest.raises(IndexFileError, match="checksum"):
        load_index(path, "0" * 32)
    assert os.listdir(path.parent) == ["index.faiss"]  # no temporary files left


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "index.faiss"
    write_atomic(path, b"old contents")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vi.os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic(path, b"new contents that never land")
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["index.faiss"]  # the temporary file was removed


# -- damaged files in a store ----------------------------------------------------------


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path):
    path.write_bytes(b"")


def _bitflip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _garbage(path):
    size = path.stat().st_size
    path.write_bytes(np.random.default_rng(4).integers(0, 256, size, dtype=np.uint8).tobytes())


def _missing(path):
    path.unlink()


DAMAGE = {"truncated": _truncate, "empty": _empty, "bitflip": _bitflip, "garbage": _garbage, "missing": _missing}

TEXTS = [
    f"the {w} sat on a {v} mat number {i}"
    for i, (w, v) in enumerate(
        (w, v) for w in ["cat", "dog", "bird", "fox", "cow"] for v in ["red", "blue", "green", "soft", "old", "new"]
    )
]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_index_detected_and_rebuilt(tmp_path, db_url, damage):
    data = tmp_path / "data"
    with SentenceStore(data, db_url=db_url) as store:
        report = store.ingest(TEXTS, [{"n": i} for i in range(len(TEXTS))])
        assert store.verify().ok
    path = data / INDEX_FILE
    assert path.exists()
    DAMAGE[damage](path)

    # detected without repair
    with SentenceStore(data, db_url=db_url, recover=False) as store:
        result = store.verify()
        assert not result.ok
        assert result.problems and all(isinstance(p, str) and p for p in result.problems)
        with store.db.read() as session:
            checksum = q.get_cache_state(session, store.cache.folder_id).checksum
        with pytest.raises(IndexFileError):
            load_index(path, checksum)
        if damage != "bitflip":  # a flipped bit may still deserialise; only the checksum notices
            with pytest.raises(IndexFileError):
                load_index(path, None)

    # rebuilt from the database on open
    with SentenceStore(data, db_url=db_url) as store:
        result = store.verify()
        assert result.ok, result.problems
        assert result.indexed == result.sentences == len(TEXTS)
        assert store.index.ntotal == len(TEXTS)
        hits = store.search(TEXTS[7], k=3)
        assert hits[0].id == report.ids[7] and hits[0].text == TEXTS[7]
        assert hits[0].metadata == {"n": 7}
    assert load_index(path, None).ntotal == len(TEXTS)


def test_damaged_index_rebuilt_by_a_reader_without_lock(tmp_path):
    """A store opened while a writer holds the lock still answers from the database."""
    from indexer.lock import WriterLock

    data = tmp_path / "data"
    with SentenceStore(data) as store:
        ids = store.ingest(TEXTS).ids
    _garbage(data / INDEX_FILE)
    lock = WriterLock(data / "writer.lock", timeout=0.1)
    with lock, SentenceStore(data) as store:
        hits = store.search(TEXTS[3], k=1)
        assert hits[0].id == ids[3]
        assert not store.verify().ok  # the file was not rewritten without the lock
    with SentenceStore(data) as store:
        assert store.verify().ok


def test_rebuild_index_command(tmp_path):
    data = tmp_path / "data"
    with SentenceStore(data) as store:
        store.ingest(TEXTS)
        _bitflip(data / INDEX_FILE)
        assert not store.verify().ok
        out = store.rebuild_index()
        assert out["indexed"] == len(TEXTS) and out["index_type"] == "Flat"
        assert store.verify().ok


def test_blocked_ivf_search_equals_faiss_scan():
    from indexer.batch_search import IVF_MIN_QUERIES, ivf_search

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((60, 32)).astype(np.float32)
    x = centres[np.arange(6000) % 60] + 0.3 * rng.standard_normal((6000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = VectorIndex.ivf(32, x, nlist=64, nprobe=8)
    index.add(np.arange(6000, dtype=np.int64) * 3 + 1, x)
    queries = np.ascontiguousarray(x[rng.integers(0, 6000, 200)] + 0.05, dtype=np.float32)
    for k in (1, 10, 150):  # 150 is above most lists' sizes
        f_sims, f_ids = index.index.search(queries, k)
        b_sims, b_ids = ivf_search(index.index, queries, k)
        assert b_ids.shape == (200, k)
        overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(f_ids.tolist(), b_ids.tolist())])
        assert overlap > 0.995
        np.testing.assert_allclose(b_sims, f_sims, atol=1e-5)
    assert len(queries) >= IVF_MIN_QUERIES
    hit = index.search(queries, 5)  # the public search takes the blocked path for a batch this size
    np.testing.assert_allclose(hit.similarities, index.index.search(queries, 5)[0], atol=1e-5)
    tiny = VectorIndex.ivf(32, x[:2000], nlist=64, nprobe=64)
    tiny.add(np.arange(3, dtype=np.int64), x[:3])  # fewer stored than k: -1 padding as FAISS pads
    sims, ids = ivf_search(tiny.index, queries[:4], 5)
    f_sims, f_ids = tiny.index.search(queries[:4], 5)
    assert (ids[:, 3:] == -1).all() and (f_ids[:, 3:] == -1).all()
    np.testing.assert_allclose(sims[:, :3], f_sims[:, :3], atol=1e-5)
    assert np.array_equal(sims[:, 3:], f_sims[:, 3:])


def test_flat_search_of_many_queries_equals_faiss():
    import faiss

    from indexer.batch_search import FLAT_MIN_QUERIES, flat_search

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 48)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = VectorIndex.flat(48)
    index.add(np.arange(10, 3010), x)
    queries = x[rng.choice(3000, 50, replace=False)] + 0.1 * rng.standard_normal((50, 48)).astype(np.float32)
    assert len(queries) >= FLAT_MIN_QUERIES
    for k in (1, 30, 3000, 5000):
        sims, ids = flat_search(index.index, queries, k)
        f_sims, f_ids = faiss.IndexIDMap.search(index.index, queries, min(k, 3000))
        np.testing.assert_allclose(sims, f_sims, atol=1e-5)
        assert (ids == f_ids).mean() > 0.999  # the same neighbours, in the same order (but exact ties)
    found = index.search(queries, 30)  # VectorIndex.search takes this path from FLAT_MIN_QUERIES queries
    np.testing.assert_allclose(found.similarities, flat_search(index.index, queries, 30)[0])
