"""Writes embed on a low-priority thread of their own (`clusterer.server.write_encoder`)."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

from clusterer.server.write_encoder import BackgroundEncoder


class Recording:
    model_name, dimension = "recording", 4

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, int, list[str]]] = []
        self.fail_on = fail_on

    def encode(self, texts, show_progress=False):
        if self.fail_on in texts:
            raise ValueError(f"cannot embed {self.fail_on!r}")
        self.calls.append((threading.current_thread().name, threading.get_native_id(), list(texts)))
        return np.full((len(texts), 4), len(texts), np.float32)


def test_writes_are_embedded_on_the_background_thread_with_the_given_model():
    inner, single = Recording(), Recording()
    enc = BackgroundEncoder(inner, single)
    try:
        assert enc.model_name == "recording" and enc.dimension == 4  # the rest is the wrapped encoder's
        out = enc.encode(["a", "b", "c"])
        assert out.shape == (3, 4) and (out == 3).all()
        assert inner.calls == [] and [c[0] for c in single.calls] == ["clusterer-write-embed"]
        with pytest.raises(ValueError, match="cannot embed"):
            BackgroundEncoder(inner, Recording(fail_on="x")).encode(["x"])
    finally:
        enc.close()
    enc.encode(["after close"])  # no thread left: the model is called directly
    assert single.calls[-1][0] == threading.current_thread().name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_the_background_thread_runs_at_a_lower_priority():
    single = Recording()
    enc = BackgroundEncoder(Recording(), single, nice=5)
    try:
        enc.encode(["one"])
        tid = single.calls[0][1]
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert enc.lowered and os.getpriority(os.PRIO_PROCESS, tid) == min(19, mine + 5)
        assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # the process and its other threads keep theirs
    finally:
        enc.close()


def test_one_core_limits_faiss_and_blas_meanwhile_and_restores_them():
    import faiss
    from threadpoolctl import threadpool_info

    from clusterer.server.write_encoder import one_core

    faiss.omp_set_num_threads(2)
    with one_core():
        assert faiss.omp_get_max_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    assert faiss.omp_get_max_threads() == 2
