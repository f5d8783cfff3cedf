"""The FastAPI application: the service object that owns the store's threads (the writer and
the readers' batchers), middleware, error handlers and the lifespan; the routes are in
:mod:`clusterer.server.routes`."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager, suppress
from typing import Any

from clusterer.server.batcher import LookupPipeline
from clusterer.server.errors import NotReady, classify
from clusterer.server.metrics import Metrics
from clusterer.server.security import BodyLimit, TokenAuth
from clusterer.server.write_encoder import BackgroundEncoder
from clusterer.server.writer import Writer
from clusterer.settings import ServerSettings

log = logging.getLogger("clusterer.server")

READY_WAIT_S = 60.0
MAP_WAIT_S = 2.0
"""How long a map request waits for a layout being computed before answering 202."""
STOP_WAIT_S = 30.0

_reader = threading.local()


def single_threaded_search() -> None:
    """One FAISS (OpenMP) thread for searches in this request thread.

    A request searches with one query vector; OpenMP's team start-up and spinning on a busy
    machine then cost more than the search itself (measured: 25 ms against 1-5 ms per lookup
    on a 3,000-sentence store, two cores under load). Parallelism comes from the concurrent
    requests instead. The setting is per thread, so the writer thread's clustering runs keep
    every core.
    """
    if not getattr(_reader, "set", False):
        import faiss

        faiss.omp_set_num_threads(1)
        _reader.set = True


def writes_encoder(encoder) -> BackgroundEncoder:
    """The store's encoder as the writer uses it: on a low-priority thread, one core at most."""
    with_threads = getattr(encoder, "with_threads", None)
    return BackgroundEncoder(encoder, with_threads(1) if with_threads else encoder)


def freeze_loaded_objects() -> None:
    """Move everything loaded so far (model, index, frameworks, ORM) out of the garbage
    collector's reach. Those objects live as long as the process, yet each full collection
    walked them all with every thread stopped: 65 ms on the sample store, once every few
    thousand lookups, which was the whole of the p99 tail. Requests' own garbage is still
    collected."""
    import gc

    gc.collect()
    gc.freeze()


class Service:
    """One store shared by every request: a writer thread, the lookup pipeline (the model and the
    index resident, concurrent lookups batched), readiness, maps."""

    def __init__(self, store, settings: ServerSettings, *, close_store: bool = True):
        self.store = store
        self.settings = settings
        self.close_store = close_store
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.writer: Writer | None = None
        self.lookups: LookupPipeline | None = None
        self._model: Any = None
        self.metrics = Metrics(self.snapshot)
        from clusterer.service.projection import MapCache

        self.maps = MapCache(store)
        self.started_at = time.time()

    def start(self) -> None:
        self.writer = Writer(
            self.store,
            maxsize=self.settings.queue_size,
            coalesce=self.settings.coalesce,
            on_done=lambda kind, s: self.metrics.writes.labels(kind).observe(s),
        )
        self.lookups = LookupPipeline(
            self._embed_lookups,
            self._lookup_vectors,
            max_batch=self.settings.lookup_batch,
            max_wait=self.settings.lookup_wait_ms / 1000,
            cache_size=self.settings.lookup_cache,
            on_batch=lambda stage, n: self.metrics.batches.labels(stage).observe(n),
        )
        threading.Thread(target=self._warm, name="clusterer-warm-up", daemon=True).start()

    def _warm(self) -> None:
        from clusterer.errors import ClustererError

        try:
            vector = self.store.embed(["warm up"])[0]
            self._model = self.store.encoder
            self.store.wrap_encoder(writes_encoder)
            self.store.lookup_copy.enable(self.settings.lookup_exact_max or None)
            self.store.refresh()
            if self.store.dimension is not None:
                with suppress(ClustererError):
                    self.store.lookup_vector(vector)
            if self.settings.freeze_gc:
                freeze_loaded_objects()
            self.ready.set()
        except Exception as exc:  # noqa: BLE001 (reported by /readyz and every data route)
            self.load_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.error("loading the model or index failed: %s", self.load_error)

    def require_ready(self, wait: float = READY_WAIT_S):
        if self.load_error:
            raise NotReady(f"the service could not load: {self.load_error}")
        if not self.ready.wait(wait):
            raise NotReady("the model and index are still loading")
        single_threaded_search()
        return self.store

    def _embed_lookups(self, texts: list[str]):
        """Lookups call the model itself, on every core; writes go through the store's encoder
        (:class:`BackgroundEncoder`)."""
        return self.store.embed(texts, encoder=self._model)

    def _lookup_vectors(self, vectors, members):
        single_threaded_search()  # in the lookup thread: one batch, one small search
        return self.store.lookup_vectors(vectors, members=members)

    @property
    def pipeline(self) -> LookupPipeline:
        if self.lookups is None:
            raise NotReady("the service has not started")
        return self.lookups

    def embed(self, texts: list[str]):
        """Embeddings of ``texts`` through the embedding stage (blocks: call from a pool thread)."""
        return self.pipeline.embed(texts).result()

    def stop(self) -> None:
        if self.lookups:
            self.lookups.close()
        stopped = self.writer.stop(STOP_WAIT_S) if self.writer else True
        if isinstance(self.store.encoder, BackgroundEncoder):
            self.store.encoder.close()
        if not stopped:
            log.warning("the write in flight did not finish in %.0f s; leaving it to the next open", STOP_WAIT_S)
        elif self.close_store:
            self.store.close()

    def run_map(self, run_id: int | None):
        """The run's map, or None while its layout is computed in the background."""
        from clusterer.service.projection import map_points

        store = self.require_ready()
        rid = store.run(run_id).id
        layout = self.maps.get(rid, MAP_WAIT_S)
        return None if layout is None else map_points(store, layout, self.settings.map_sample)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "queue_depth": self.writer.depth if self.writer else 0,
            "ready": 1 if self.ready.is_set() else 0,
        }
        index = self.store.index if self.store.cache.loaded else None
        out["index_vectors"] = index.ntotal if index is not None else None
        try:
            out["index_bytes"] = self.store.index_path.stat().st_size
        except OSError:
            out["index_bytes"] = 0
        try:
            out.update(self.store.gauges())
        except Exception as exc:  # noqa: BLE001 (a scrape must not fail because the database is busy)
            log.warning("metrics snapshot: %s", exc)
        return out


class RequestMetrics:
    """Counts and times every request by its route template (``/clusters/{cluster_id}``, not the id)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def watch(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or ("unauthorized" if status[0] == 401 else "unmatched")
            self.metrics.observe(template, scope.get("method", ""), status[0], time.perf_counter() - started)


def create_app(store, settings: ServerSettings | None = None, *, close_store: bool = True):
    """The ASGI app serving ``store``; the store is closed when the app shuts down (unless told not to)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from clusterer.server import curation_routes, routes

    settings = settings or ServerSettings()
    service = Service(store, settings, close_store=close_store)

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            import anyio

            await anyio.to_thread.run_sync(service.stop)

    app = FastAPI(
        title="clusterer",
        version=_version(),
        lifespan=lifespan,
        description="Sentence clustering service: ingest, search, look up and explore clusters. "
        "Every answer is the JSON of the matching `clusterer ... --json` command.",
    )
    app.state.service = service
    app.include_router(routes.router)
    app.include_router(curation_routes.router)
    app.mount("/static", StaticFiles(directory=str(routes.static_dir())), name="static")

    def error_response(exc: BaseException) -> JSONResponse:
        status, body, headers = classify(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return JSONResponse(
                {"error": f"malformed JSON body: {first.get('ctx', {}).get('error', 'cannot parse')}", "field": "body"},
                status_code=400,
            )
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        return JSONResponse({"error": f"{field}: {first.get('msg', 'invalid value')}", "field": field}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    for cls in _library_errors():
        app.add_exception_handler(cls, lambda request, exc: error_response(exc))

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        return error_response(exc)

    app.add_middleware(BodyLimit, limit=settings.max_body)
    if settings.token:
        app.add_middleware(TokenAuth, token=settings.token)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    return app


def _library_errors() -> tuple[type[Exception], ...]:
    from sqlalchemy.exc import SQLAlchemyError

    from clusterer.errors import library_errors
    from clusterer.server.batcher import BatcherClosed, BatcherFull
    from clusterer.server.errors import ApiError
    from clusterer.server.writer import QueueFull, ShuttingDown

    return (
        *library_errors(),
        SQLAlchemyError,
        ApiError,
        QueueFull,
        ShuttingDown,
        NotReady,
        BatcherFull,
        BatcherClosed,
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("clusterer")
    except Exception:  # noqa: BLE001 (not installed: run from a checkout)
        return "0"
