"""Embedding on Ray workers: the encoder each actor builds, and the actor's batch function.

An :class:`EncoderSpec` names a ``module:callable`` and its keyword arguments, so that every
worker builds the same encoder where it runs (the default builds the store's sentence-transformers
model on the worker's device). :class:`EmbedWorker` holds one encoder for its lifetime; for each
batch it computes the dedup hash of every record with the project's :func:`text_hash`, leaves out
copies inside the batch and (when it can read the store) sentences already stored, and embeds
the rest, so that re-running an ingest embeds nothing twice.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clusterer.distributed.ray_read import RECORD
from indexer.normalize import text_hash

DEFAULT_FACTORY = "indexer.sentence_store:make_encoder"


@dataclass(frozen=True)
class EncoderSpec:
    """``factory`` (``module:callable``) called with ``kwargs`` builds the encoder."""

    factory: str = DEFAULT_FACTORY
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: str | None, device: str = "auto", precision: str = "auto") -> EncoderSpec:
        return cls(DEFAULT_FACTORY, {"model": model, "device": device, "precision": precision})

    @classmethod
    def parse(cls, factory: str) -> EncoderSpec:
        from clusterer.errors import InvalidParameterError

        module, sep, name = factory.partition(":")
        if not sep or not module or not name:
            raise InvalidParameterError(f"an encoder factory is module:callable, got {factory!r}")
        return cls(factory)

    def build(self) -> Any:
        module, _, name = self.factory.partition(":")
        return getattr(importlib.import_module(module), name)(**self.kwargs)


def describe_encoder(spec: EncoderSpec) -> tuple[str, int]:
    """(model name, dimension) of the encoder ``spec`` builds (run as a Ray task)."""
    encoder = spec.build()
    dimension = getattr(encoder, "dimension", None)
    if dimension is None:
        dimension = int(encoder.encode(["probe"]).shape[1])
    return str(encoder.model_name), int(dimension)


class EmbedWorker:
    """Ray Data actor: hashes, skips known sentences and copies, embeds the rest."""

    def __init__(self, spec: EncoderSpec, db_url: str | None = None):
        self.encoder = spec.build()
        self.dimension = int(self.encoder.dimension)
        self._db: Any = None
        if db_url is not None:
            self._db = _open_readonly(db_url)

    def _known(self, hashes: list[str]) -> set[str]:
        if self._db is None or not hashes:
            return set()
        from storage import sentences as q

        try:
            with self._db.read() as session:
                return q.existing_hashes(session, hashes)
        except Exception:  # noqa: BLE001 (the check only saves work; the driver's commit decides)
            return set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kinds = batch["kind"]
        texts = batch["text"]
        n = len(texts)
        hashes = [text_hash(str(t)) if k == RECORD else "" for k, t in zip(kinds, texts)]
        first: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h:
                first.setdefault(h, i)
        for h in self._known(list(first)):
            del first[h]
        todo = sorted(first.values())
        vectors = np.zeros((n, self.dimension), dtype=np.float32)
        embedded = np.zeros(n, dtype=bool)
        if todo:
            vectors[todo] = self.encoder.encode([str(texts[i]) for i in todo])
            embedded[todo] = True
        out = dict(batch)
        out["hash"] = np.asarray(hashes, dtype=object)
        out["vector"] = vectors
        out["embedded"] = embedded
        return out


def _open_readonly(db_url: str) -> Any:
    """The store's database for reading hashes, or None where this worker cannot open it."""
    from storage.db import Database

    try:
        return Database(db_url, create=False)
    except Exception:  # noqa: BLE001 (e.g. a SQLite file on another machine)
        return None
