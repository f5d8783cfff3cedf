"""Sentence encoder: turns sentences into L2-normalised float32 embeddings with a
sentence-transformers model, offline for the bundled default.

The work is split by job: :mod:`indexer.model_resolution` (which files a model name means,
loading offline), :mod:`indexer.hardware` (CPU threads, bf16, CUDA without importing torch),
:mod:`indexer.precision` (reduced precision behind a fidelity probe) and
:mod:`indexer.onnx_backend` (export, cache and run an ONNX graph).  On CPU at fp32 the default
backend is ONNX Runtime when onnxruntime is importable and the probe passes; otherwise the torch
backend is used, with a warning when ONNX was wanted.

torch, sentence-transformers and onnxruntime are imported lazily so importing this module is
cheap.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import EncodingError, ModelLoadError
from indexer.hardware import cuda_available
from indexer.model_resolution import (
    DEFAULT_MODEL,
    bundled_model_path,
    is_default_model,
    load_sentence_transformer,
    local_model_dir,
    model_name,
    resolve_model,
)
from indexer.onnx_backend import ONNX_BATCH_SIZE, OnnxRunner, load_runner
from indexer.precision import (
    FIDELITY_THRESHOLD,
    PRECISIONS,
    choose_precision,
    torch_embed,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL",
    "FIDELITY_THRESHOLD",
    "PRECISIONS",
    "Encoder",
    "bundled_model_path",
    "is_default_model",
    "resolve_model",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
TORCH_BATCH_SIZE = 128


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise EncodingError("encode() takes a list of strings, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise EncodingError(f"text at position {i} is {type(t).__name__}, expected str")
    return out


class Encoder:
    """Turns sentences into L2-normalised float32 embeddings.

    ``model``: None / ``DEFAULT_MODEL`` for the bundled model, or any local path or
    sentence-transformers name.  ``device``: "auto" (CUDA when available, else CPU), "cpu",
    "cuda", ...  ``precision``: "auto", "fp32", "bf16" or "fp16" (CUDA only).
    ``backend``: "auto" (ONNX Runtime on CPU at fp32 when onnxruntime is importable and its
    fidelity probe passes, else torch), "torch" or "onnx" (CPU fp32 only; errors instead of
    falling back).  After loading, ``backend``, ``precision`` and ``fidelity`` (probe min
    cosine to torch fp32, None when the fp32 torch model itself is used) say what runs.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        backend: str = "auto",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "onnx" and (precision not in ("auto", "fp32") or device not in ("auto", "cpu")):
            raise ValueError("backend 'onnx' supports only device 'cpu' and precision 'fp32'")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._requested = model
        self.model_name = model_name(model)
        self.requested_device = device
        self.requested_precision = precision
        # None: the backend's default (ONNX Runtime is fastest with small, cache-sized
        # length-bucketed batches on CPU; torch with larger ones).
        self._batch_size = None if batch_size is None else int(batch_size)
        self.device: str | None = None if device == "auto" else device
        self.precision: str | None = None if precision == "auto" else precision
        self.requested_backend = backend
        self.backend: str | None = None if backend == "auto" else backend
        self.fidelity: float | None = None
        self.onnx_path: Path | None = None
        self.onnx_exported = False  # True when this load (re-)exported the ONNX model
        self._dimension: int | None = None
        self._model: Any = None
        self._fp32: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Encoder(model={self.model_name!r}, device={self.device!r}, "
            f"precision={self.precision!r}, backend={self.backend!r}, loaded={self._model is not None})"
        )

    @property
    def batch_size(self) -> int:
        if self._batch_size is not None:
            return self._batch_size
        return ONNX_BATCH_SIZE if self.backend == "onnx" else TORCH_BATCH_SIZE

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = int(value)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self.load()
        assert self._dimension is not None, "load() sets the dimension"
        return self._dimension

    def load(self) -> Encoder:
        with self._lock:
            if self._model is None:
                self._load()
        return self

    def _load(self) -> None:
        device = self.requested_device
        if device == "auto":
            device = "cuda" if cuda_available() else "cpu"
        if (
            self.requested_backend != "torch"
            and device == "cpu"
            and self.requested_precision in ("auto", "fp32")
            and self._load_onnx()
        ):
            return
        self._load_torch(device)

    def _load_onnx(self) -> bool:
        """Try the ONNX Runtime backend; True when it is in use.  With backend="onnx" failures
        raise ModelLoadError, with "auto" they log a warning and return False (torch)."""
        strict = self.requested_backend == "onnx"

        def give_up(msg: str, exc: BaseException | None = None) -> bool:
            if strict:
                raise ModelLoadError(f"ONNX backend unavailable for {self.model_name!r}: {msg}") from exc
            log.warning("ONNX backend unavailable for %s (%s); falling back to torch", self.model_name, msg)
            return False

        try:
            import onnxruntime  # noqa: F401
            import tokenizers  # noqa: F401
        except ImportError as exc:
            return give_up(f"onnxruntime is not importable: {exc}", exc)
        path = local_model_dir(self._requested)
        if path is None:
            if strict:
                return give_up("the ONNX backend needs a local model folder")
            log.info("%s is not a local folder; using the torch backend", self.model_name)
            return False

        def fp32_cpu():
            if self._fp32 is None:
                self._fp32 = self._load_fp32("cpu")
            return self._fp32

        try:
            runner, fidelity, folder, exported = load_runner(self.model_name, path, fp32_cpu)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any export/runtime failure -> torch
            return give_up(f"{type(exc).__name__}: {exc}", exc)
        self.onnx_exported = exported
        self.fidelity = fidelity
        if fidelity < FIDELITY_THRESHOLD:
            if strict:
                log.warning(
                    "ONNX fidelity probe for %s: min cosine %.4f < %.2f", self.model_name, fidelity, FIDELITY_THRESHOLD
                )
            else:
                self.fidelity = None
                return give_up(f"fidelity probe failed (min cosine {fidelity:.4f} < {FIDELITY_THRESHOLD})")
        self._model, self._dimension = runner, runner.dimension
        self.device, self.precision, self.backend, self.onnx_path = "cpu", "fp32", "onnx", folder / "model.onnx"
        self._fp32 = None  # the torch model is not needed any more
        log.info("%s: using onnxruntime (probe min cosine %.5f, %s)", self.model_name, fidelity, folder)
        return True

    def _load_torch(self, device: str) -> None:
        fp32 = self._fp32 if self._fp32 is not None and device == "cpu" else self._load_fp32(device)
        self._fp32 = None
        self.backend = "torch"
        self.device = str(fp32.device) if device != "cpu" else "cpu"
        getter = getattr(fp32, "get_embedding_dimension", None) or getattr(
            fp32, "get_sentence_embedding_dimension", None
        )
        dim = getter() if getter is not None else None
        if not dim:
            dim = int(torch_embed(fp32, ["dimension probe"], 1).shape[1])
        self._dimension = int(dim)
        self._model, self.precision, fidelity = choose_precision(
            fp32, device, self.requested_precision, self.model_name
        )
        if fidelity is not None:
            self.fidelity = fidelity

    def _load_fp32(self, device: str):
        return load_sentence_transformer(self._requested, device)

    def with_threads(self, threads: int) -> Encoder:
        """This encoder with a model session of its own on ``threads`` CPU threads (ONNX Runtime
        backend), for work that must not take every core; the same object on other backends."""
        self.load()
        if not isinstance(self._model, OnnxRunner):
            return self
        other = copy.copy(self)
        other._model = OnnxRunner(self._model.folder, threads=threads)
        other._lock = threading.Lock()
        return other

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` -> float32 array (len(texts), dimension), rows L2-normalised,
        in input order."""
        items = _check_texts(texts)
        self.load()
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if isinstance(self._model, OnnxRunner):
            if not show_progress:
                return self._model.encode(items, self.batch_size)
            from tqdm.auto import tqdm

            with tqdm(total=len(items), desc="Batches", unit="sent", file=sys.stderr) as bar:
                return self._model.encode(items, self.batch_size, bar)
        return torch_embed(self._model, items, self.batch_size, show_progress)
