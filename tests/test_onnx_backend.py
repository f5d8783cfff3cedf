"""indexer.onnx_backend: the cache key and the cheap check of a cached export (no model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from indexer import onnx_backend
from indexer.onnx_backend import (
    model_file_record,
    onnx_cache_dir,
    open_cached,
    verify_model_file,
)


def _model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "my model"
    (d / "1_Pooling").mkdir(parents=True)
    (d / "config.json").write_text('{"hidden_size": 8}')
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    (d / "1_Pooling" / "config.json").write_text("{}")
    return d


def test_cache_dir_key(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERER_CACHE_DIR", str(tmp_path / "cache"))
    model = _model_dir(tmp_path)
    first = onnx_cache_dir("org/my model", model)
    assert first.parent == tmp_path / "cache" / "onnx"
    assert first.name.startswith("my_model-")
    assert onnx_cache_dir("org/my model", model) == first  # stable
    weights = model / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = onnx_cache_dir("org/my model", model)
    assert touched != first  # mtime is in the key
    weights.write_bytes(b"\0" * 65)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert onnx_cache_dir("org/my model", model) not in (first, touched)  # so is size
    before = onnx_cache_dir("org/my model", model)
    (model / ".hidden").write_text("ignored")
    assert onnx_cache_dir("org/my model", model) == before
    (model / "extra.txt").write_text("x")
    assert onnx_cache_dir("org/my model", model) != before


def test_export_version_and_library_versions_in_key(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERER_CACHE_DIR", str(tmp_path / "cache"))
    model = _model_dir(tmp_path)
    base = onnx_cache_dir("m", model)
    monkeypatch.setattr(onnx_backend, "ONNX_EXPORT_VERSION", onnx_backend.ONNX_EXPORT_VERSION + 1)
    assert onnx_cache_dir("m", model) != base
    monkeypatch.undo()
    monkeypatch.setenv("CLUSTERER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_backend, "_dist_version", lambda name: "9.9" if name == "onnxruntime" else "1")
    assert onnx_cache_dir("m", model) != base


@pytest.fixture
def entry(tmp_path):
    folder = tmp_path / "entry"
    folder.mkdir()
    model_file = folder / "model.onnx"
    model_file.write_bytes(b"onnx bytes " * 1000)
    meta = {"export": onnx_backend.ONNX_EXPORT_VERSION, **model_file_record(model_file)}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder, meta


def _no_hashing(monkeypatch):
    def fail(path):
        raise AssertionError(f"{path} was hashed")

    monkeypatch.setattr(onnx_backend, "sha256_file", fail)


def test_unchanged_file_is_not_hashed(entry, monkeypatch):
    folder, meta = entry
    _no_hashing(monkeypatch)
    verify_model_file(folder, dict(meta))


def test_new_mtime_same_bytes_is_hashed_once(entry, monkeypatch):
    folder, meta = entry
    model_file = folder / "model.onnx"
    st = model_file.stat()
    os.utime(model_file, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    calls = []
    real = onnx_backend.sha256_file
    monkeypatch.setattr(onnx_backend, "sha256_file", lambda p: calls.append(p) or real(p))
    verify_model_file(folder, dict(meta))
    assert len(calls) == 1
    stored = json.loads((folder / "meta.json").read_text())
    assert stored["mtime_ns"] == model_file.stat().st_mtime_ns  # recorded for next time
    _no_hashing(monkeypatch)
    verify_model_file(folder, stored)


def test_changed_bytes_are_rejected(entry):
    folder, meta = entry
    model_file = folder / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[10] ^= 0xFF
    model_file.write_bytes(bytes(data))  # same size, new mtime, other digest
    st = model_file.stat()
    os.utime(model_file, ns=(st.st_atime_ns, meta["mtime_ns"] + 7))
    with pytest.raises(ValueError, match="checksum"):
        verify_model_file(folder, dict(meta))
    model_file.write_bytes(b"short")
    with pytest.raises(ValueError, match="size"):
        verify_model_file(folder, dict(meta))


def test_incomplete_or_broken_entry_is_removed(entry, tmp_path):
    folder, _ = entry
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"x")
    assert open_cached(half) is None and not half.exists()  # no meta.json: an export that died
    assert open_cached(folder) is None and not folder.exists()  # not a loadable export
