"""``clusterer ingest --ray``: Ray Data reads and embeds, one writer commits.

The pipeline: one read task per input file (:mod:`clusterer.distributed.ray_read`, the project's
readers), then an actor pool of :class:`~clusterer.distributed.ray_embed.EmbedWorker` holding the
encoder (one per GPU where the cluster has GPUs, else one per node), which hashes, skips known
sentences and embeds. Order is preserved, so rows arrive file by file, line by line.

This process is the one writer: it consumes the embedded batches and commits them through the
store's normal ingest path (:meth:`SentenceStore.ingest_records`: the writer lock, dedup by hash
against the database, the listener's upkeep, the FAISS cache), with a
:class:`PrecomputedEncoder` handing it the workers' vectors. A batch is acknowledged when its
transaction commits; a worker killed before that is restarted by Ray and its batch recomputed
(``max_restarts``/``max_task_retries``), and the commit's dedup makes a recomputed or re-run batch
add nothing twice.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from clusterer.distributed.ray_embed import EmbedWorker, EncoderSpec, describe_encoder
from clusterer.distributed.ray_env import RayCluster, import_ray, ray_session
from clusterer.distributed.ray_read import STATS, ReadOptions, read_file
from clusterer.errors import ClustererError, InvalidParameterError
from indexer import readers
from indexer.errors import IndexerError
from indexer.ingest import IngestReport
from storage.errors import StorageError

READ_CPUS = 0.25
EMBED_CPUS = 0.5
"""Scheduling tokens: the encoder runs its own threads; small tokens let reads share a node."""
EMBED_BATCH = 512
BLOCK_BYTES = 32 << 10
"""Blocks of a few hundred short sentences: the embedding workers share even one file."""
RETRIES = 3

Progress = Callable[[int], None]


class Row(NamedTuple):
    kind: str
    text: str
    meta: str
    source: str
    line: int
    vector: np.ndarray
    embedded: bool


class PrecomputedEncoder:
    """The store's encoder during a Ray ingest: the vectors the workers computed, by text.

    A text it was not given (a sentence a worker found stored, deleted before the commit) is
    embedded here by the encoder of ``spec``, built on first need."""

    precision = "fp32"

    def __init__(self, model_name: str, dimension: int, spec: EncoderSpec):
        self.model_name = model_name
        self.dimension = dimension
        self._spec = spec
        self._vectors: dict[str, np.ndarray] = {}
        self._local: Any = None
        self.embedded_here = 0

    def put(self, text: str, vector: np.ndarray) -> None:
        self._vectors[text] = vector

    def clear(self) -> None:
        self._vectors.clear()

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        missing = []
        for i, text in enumerate(texts):
            vector = self._vectors.get(text)
            if vector is None:
                missing.append(i)
            else:
                out[i] = vector
        if missing:
            if self._local is None:
                self._local = self._spec.build()
            out[missing] = self._local.encode([texts[i] for i in missing])
            self.embedded_here += len(missing)
        return out


@dataclass
class RayIngest:
    reports: list[IngestReport]
    cluster: RayCluster
    workers: int
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster.to_dict(),
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
            "stages": {k: round(v, 3) for k, v in self.stages.items()},
        }


_LIBRARY = (IndexerError, ClustererError, StorageError)


def library_cause(exc: BaseException) -> BaseException | None:
    """The project's own error inside a Ray error (a task's exception travels as its cause)."""
    seen: set[int] = set()
    queue: list[BaseException | None] = [exc]
    while queue:
        e = queue.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        wrapper = type(e).__module__.startswith("ray") or "RayTaskError" in type(e).__name__
        if isinstance(e, _LIBRARY) and not wrapper:
            return e
        cause = getattr(e, "cause", None)
        queue.extend([cause if isinstance(cause, BaseException) else None, e.__cause__, e.__context__])
    return None


def encoder_spec(model: str | None, device: str, precision: str, factory: str | None) -> EncoderSpec:
    return EncoderSpec.parse(factory) if factory else EncoderSpec.for_model(model, device, precision)


def worker_count(cluster: RayCluster, device: str) -> tuple[int, float]:
    """(actors, GPUs per actor): one per GPU where there are GPUs (and the device allows), else one per node."""
    if cluster.gpus >= 1 and device != "cpu":
        return int(cluster.gpus), 1.0
    return max(1, cluster.nodes), 0.0


def _rows(batches: Iterator[dict[str, np.ndarray]]) -> Iterator[Row]:
    for b in batches:
        for i in range(len(b["kind"])):
            yield Row(
                str(b["kind"][i]),
                str(b["text"][i]),
                str(b["meta"][i]),
                str(b["source"][i]),
                int(b["line"][i]),
                b["vector"][i],
                bool(b["embedded"][i]),
            )


class _Feed:
    """The ordered rows, cut into one record stream per input (each ends with its stats row)."""

    def __init__(self, rows: Iterator[Row], lookup: PrecomputedEncoder):
        self._rows = rows
        self._lookup = lookup
        self.pending = self._next()

    def _next(self) -> Row | None:
        try:
            return next(self._rows, None)
        except Exception as exc:
            cause = library_cause(exc)
            if cause is not None:
                raise cause from None
            raise

    def records(self, stats: readers.ReadStats) -> Iterator[readers.Record]:
        while self.pending is not None:
            row, self.pending = self.pending, None
            if row.kind == STATS:
                counts = json.loads(row.meta)
                stats.empty, stats.invalid, stats.errors = counts["empty"], counts["invalid"], counts["errors"]
                self.pending = self._next()
                return
            if row.embedded:
                self._lookup.put(row.text, row.vector)
            meta = json.loads(row.meta) if row.meta else {}
            yield readers.Record(row.text, meta, row.source, row.line)
            self.pending = self._next()


def build_dataset(
    paths: Sequence[str], read: ReadOptions, spec: EncoderSpec, db_url: str | None, workers: int, gpus: float
) -> Any:
    ray = import_ray()
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # small blocks (a few hundred sentences), so that every worker gets work even from one file
    ctx.target_max_block_size = BLOCK_BYTES
    files = ray.data.from_items(
        [{"path": os.path.abspath(p), "source": p} for p in paths], override_num_blocks=max(1, len(paths))
    )
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter yet for retries, restarts or spreading
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        texts = files.map_batches(
            read_file, batch_size=1, fn_kwargs={"options": read}, num_cpus=READ_CPUS, max_retries=RETRIES
        )
        return texts.map_batches(
            EmbedWorker,
            fn_constructor_kwargs={"spec": spec, "db_url": db_url},
            batch_size=EMBED_BATCH,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1.0 if gpus else EMBED_CPUS,
            num_gpus=gpus or None,
            max_restarts=RETRIES,
            max_task_retries=RETRIES,
            scheduling_strategy="SPREAD",
        )


def ingest_on_ray(
    settings: Any,
    inputs: Sequence[str],
    *,
    read: ReadOptions | None = None,
    near_duplicates: float | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    spec: EncoderSpec | None = None,
) -> RayIngest:
    """Ingest ``inputs`` on the Ray cluster ``settings.ray_address`` into the store of ``settings``.

    ``workers``: embedding actors (default: one per GPU, else one per node); ``spec``: the
    encoder the workers build (default: ``settings.ray_encoder`` or the store's model)."""
    from clusterer.api import Store

    read = read or ReadOptions()
    if "-" in inputs:
        raise InvalidParameterError("--ray reads files on the workers: give file paths, not - (standard input)")
    spec = spec or encoder_spec(settings.model, settings.device, settings.precision, settings.ray_encoder)
    started = time.perf_counter()
    stages: dict[str, float] = {}
    with ray_session(settings.ray_address) as cluster:
        ray = import_ray()
        n_workers, gpus = worker_count(cluster, settings.device)
        n_workers = workers or n_workers
        tick = time.perf_counter()
        probe = ray.remote(describe_encoder).options(num_cpus=EMBED_CPUS, max_retries=RETRIES)
        try:
            model_name, dimension = ray.get(probe.remote(spec))
        except Exception as exc:  # noqa: BLE001 (a Ray error: re-raised as the library error inside, if any)
            cause = library_cause(exc)
            raise (cause or exc) from None
        stages["encoder_probe"] = time.perf_counter() - tick
        lookup = PrecomputedEncoder(model_name, dimension, spec)
        reports: list[IngestReport] = []
        tick = time.perf_counter()
        with Store.open(settings.data_dir, create=True, encoder=lookup, **settings.store_kwargs()) as store:
            ds = build_dataset(inputs, read, spec, store.db_url, n_workers, gpus)
            feed = _Feed(
                _rows(ds.iter_batches(batch_size=EMBED_BATCH, batch_format="numpy", prefetch_batches=2)), lookup
            )

            def committed(n: int) -> None:
                lookup.clear()  # every vector handed over so far is stored (or a duplicate)
                if progress is not None:
                    progress(n)

            while feed.pending is not None:
                stats = readers.ReadStats()
                reports.append(
                    store.ingest_records(
                        feed.records(stats),
                        source=feed.pending.source,
                        progress=committed,
                        stats=stats,
                        near_duplicates=near_duplicates,
                    )
                )
        stages["pipeline"] = time.perf_counter() - tick
        stages["embedded_on_driver"] = float(lookup.embedded_here)
    return RayIngest(reports, cluster, n_workers, time.perf_counter() - started, stages)
