"""The HTTP routes. Each parses its input, calls the store or the writer, and answers with the
JSON of the matching ``clusterer ... --json`` command; none holds a rule of its own.

Reads are plain functions, which FastAPI runs in its thread pool, so they run in parallel;
writes go to the single writer thread and the request waits for its answer without holding a
pool thread.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from clusterer.server.errors import ApiError
from clusterer.service.views import cluster_detail

router = APIRouter()

MAX_ID = 2**63 - 1
MAX_PAGE = 1000
SentenceId = Annotated[int, Path(ge=1, le=MAX_ID, description="Sentence id")]
ClusterId = Annotated[int, Path(ge=0, le=2**31 - 1, description="Cluster id")]
RunParam = Annotated[int | None, Query(alias="run", ge=1, le=MAX_ID, description="Run id (default: the latest)")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]


class IngestBody(BaseModel):
    texts: list[str] = Field(description="Sentences to store")
    metadata: list[dict[str, Any] | None] | None = Field(None, description="One metadata object per text")
    source: str | None = Field(None, max_length=200, description="Recorded as the sentences' source")


class LookupBody(BaseModel):
    text: str | None = Field(None, description="One text")
    texts: list[str] | None = Field(None, description="Several texts")
    members: int = Field(5, ge=0, le=100, description="Members of the cluster to show")


class RunBody(BaseModel):
    method: str | None = Field(None, max_length=64, description="Clustering method (default: the store's default)")
    params: dict[str, Any] = Field(default_factory=dict, description="The method's parameters")
    force: bool = Field(False, description="Run even when the guard rails object")


def _service(request: Request):
    return request.app.state.service


def _store(request: Request):
    return _service(request).require_ready()


async def _ready_store(svc):
    """The store once the service is ready, without holding a pool thread when it already is."""
    if svc.ready.is_set() and not svc.load_error:
        return svc.store
    return await asyncio.to_thread(svc.require_ready)


def static_dir():
    return resources.files("clusterer.server") / "static"


def _check_texts(texts: list[str], settings, field: str, single: bool = False) -> None:
    if not texts:
        raise ApiError(422, f"{field}: at least one text is needed", field)
    if len(texts) > settings.max_batch:
        raise ApiError(413, f"{field}: {len(texts)} texts in one request; at most {settings.max_batch}", field)
    for i, text in enumerate(texts):
        if len(text) > settings.max_text:
            name = field if single else f"{field}[{i}]"
            raise ApiError(422, f"{name}: {len(text)} characters; at most {settings.max_text}", name)


async def _await(future):
    return await asyncio.wrap_future(future)


# -- health ---------------------------------------------------------------------------


@router.get("/healthz", tags=["health"])
def healthz():
    """The process answers (no token needed)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
def readyz(request: Request):
    """Ready once the model is loaded and the index open."""
    svc = _service(request)
    store = svc.store
    body = {
        "ready": svc.ready.is_set(),
        "model": bool(store._encoder is not None and svc.ready.is_set()),
        "index": store.cache.loaded,
        "lookup_index": store.lookup_copy.status(),
        "error": svc.load_error,
    }
    return JSONResponse(
        body, status_code=200 if body["ready"] else 503, headers=None if body["ready"] else {"Retry-After": "2"}
    )


@router.get("/metrics", tags=["health"])
def metrics(request: Request):
    """Prometheus text format."""
    data, content_type = _service(request).metrics.render()
    return Response(data, media_type=content_type)


# -- the store ------------------------------------------------------------------------


@router.get("/stats", tags=["store"])
def stats(request: Request):
    """As `clusterer stats --json`."""
    return _store(request).stats()


@router.get("/verify", tags=["store"])
def verify(request: Request):
    """As `clusterer verify --json`: do the index file and the database agree?"""
    return _store(request).verify().to_dict()


@router.post("/sentences", tags=["store"])
async def add_sentences(request: Request, body: IngestBody):
    """Store a batch: as `clusterer ingest --json`, plus each text's id, status and cluster."""
    from clusterer.service.batches import Batch

    svc = _service(request)
    _check_texts(body.texts, svc.settings, "texts")
    if body.metadata is not None and len(body.metadata) != len(body.texts):
        raise ApiError(422, f"metadata: {len(body.metadata)} entries for {len(body.texts)} texts", "metadata")
    await asyncio.to_thread(svc.require_ready)
    return await _await(svc.writer.ingest(Batch(body.texts, body.metadata, body.source or "<http>")))


@router.get("/sentences/{sentence_id}", tags=["store"])
def get_sentence(request: Request, sentence_id: SentenceId):
    """One stored sentence: id, text, metadata, source file and line."""
    from clusterer.service.batches import sentence_record

    row = _store(request).get([sentence_id]).get(sentence_id)
    if row is None:
        raise ApiError(404, f"no sentence with id {sentence_id}")
    return sentence_record(row)


@router.delete("/sentences/{sentence_id}", tags=["store"])
async def delete_sentence(request: Request, sentence_id: SentenceId):
    """As `clusterer delete ID --json`; 404 when there is no such sentence."""
    svc = _service(request)
    await asyncio.to_thread(svc.require_ready)
    removed = await _await(svc.writer.delete([sentence_id]))
    if not removed:
        raise ApiError(404, f"no sentence with id {sentence_id}")
    return {"deleted": removed, "not_found": []}


@router.get("/sentences/{sentence_id}/cluster", tags=["clusters"])
def sentence_cluster(request: Request, sentence_id: SentenceId):
    """As `clusterer which ID --json`."""
    return _store(request).cluster_of(sentence_id)


@router.get("/search", tags=["store"])
def search(
    request: Request,
    q: Annotated[str, Query(min_length=1)],
    k: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 10,
    where: Annotated[list[str] | None, Query()] = None,
):
    """As `clusterer search TEXT -k K [--where COND ...] --json`."""
    svc = _service(request)
    store = svc.require_ready()
    _check_texts([q], svc.settings, "q", single=True)
    conditions = list(where or [])
    if store.dimension is None:
        return {"query": q, "where": conditions, "hits": []}
    vector = svc.embed([q])[0]
    hits = store.search_vector(vector, k, where=conditions or None)
    return {"query": q, "where": conditions, "hits": [h.to_dict() for h in hits]}


@router.post("/lookup", tags=["clusters"])
async def lookup(request: Request, body: LookupBody):
    """As `clusterer lookup TEXT --json` for `text`; `{"results": [...]}` for `texts`.

    Concurrent lookups are answered together: their texts are embedded by the resident model
    and searched with one index search (see :mod:`clusterer.server.batcher`)."""
    svc = _service(request)
    if (body.text is None) == (body.texts is None):
        raise ApiError(422, "give either text or texts", "text")
    texts = [body.text] if body.text is not None else body.texts or []
    _check_texts(texts, svc.settings, "text" if body.text is not None else "texts", single=body.text is not None)
    store = await _ready_store(svc)
    if store.dimension is None:
        from clusterer.service.runs import NoRunError

        raise NoRunError("no clustering run yet: run `clusterer cluster` first")
    results = await _await(svc.pipeline.lookup(texts, body.members))
    return JSONResponse(results[0] if body.text is not None else {"results": results})


# -- runs and jobs --------------------------------------------------------------------


@router.get("/runs", tags=["runs"])
def runs(request: Request, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20):
    """As `clusterer runs --json`."""
    return {"runs": [r.to_dict() for r in _store(request).runs(limit)]}


@router.post("/runs", tags=["runs"], status_code=202)
def start_run(request: Request, body: RunBody):
    """Start a clustering run in the background (through the writer): 202 and the job to follow."""
    svc = _service(request)
    svc.require_ready()
    _check_run_params(body.method, body.params)
    job = svc.writer.cluster(body.method, body.params, body.force)
    return JSONResponse({"job": job.to_dict()}, status_code=202, headers={"Location": f"/jobs/{job.id}"})


def _check_run_params(method: str | None, params: dict[str, Any]) -> None:
    """Refuse a bad method or parameters before queueing, with the method registry's own check."""
    from clusterer.service import methods

    methods.resolve(method, **params)


@router.get("/jobs/{job_id}", tags=["runs"])
def get_job(request: Request, job_id: Annotated[int, Path(ge=1, le=MAX_ID)]):
    """A background job: state (queued, running, done, failed, cancelled), progress, result."""
    job = _service(request).writer.job(job_id)
    if job is None:
        raise ApiError(404, f"no job with id {job_id}")
    return job.to_dict()


# -- clusters -------------------------------------------------------------------------


@router.get("/clusters", tags=["clusters"])
def clusters(
    request: Request,
    run_id: RunParam = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    level: Annotated[str | None, Query(max_length=32)] = None,
):
    """As `clusterer clusters --json`."""
    store = _store(request)
    run = store.run(run_id)
    level = "fine" if level is None else level
    body: dict[str, Any] = {"run": run.to_dict(), "level": level}
    items = store.clusters(run.id, level=level)
    if limit:
        items = items[:limit]
    body["clusters"] = [c.to_dict() for c in items]
    return body


@router.get("/clusters/{cluster_id}", tags=["clusters"])
def cluster(
    request: Request,
    cluster_id: ClusterId,
    run_id: RunParam = None,
    limit: Annotated[int, Query(ge=0, le=MAX_PAGE)] = 20,
    offset: Offset = 0,
):
    """As `clusterer show ID --json`: keywords, centre, representatives, members (and, where the run
    has a hierarchy, its child clusters or its parent topic)."""
    store = _store(request)
    info = store.cluster_info(cluster_id, run_id=run_id, limit=limit, offset=offset)
    return cluster_detail(store, info)[0]


@router.get("/clusters/{cluster_id}/members", tags=["clusters"])
def members(
    request: Request,
    cluster_id: ClusterId,
    run_id: RunParam = None,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
):
    """As `clusterer members ID --json`: a page of members, most similar to the centre first."""
    items = _store(request).members(cluster_id, offset=offset, limit=limit, run_id=run_id)
    return {"cluster_id": cluster_id, "offset": offset, "limit": limit, "members": [m.to_dict() for m in items]}


@router.get("/clusters/{cluster_id}/history", tags=["clusters"])
def history(request: Request, cluster_id: ClusterId):
    """As `clusterer history ID --json`."""
    return {"cluster_id": cluster_id, "events": [e.to_dict() for e in _store(request).history(cluster_id)]}


@router.get("/unassigned", tags=["clusters"])
def unassigned(
    request: Request, run_id: RunParam = None, offset: Offset = 0, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50
):
    """As `clusterer unassigned --json`."""
    total, items = _store(request).unassigned(offset=offset, limit=limit, run_id=run_id)
    return {"total": total, "offset": offset, "limit": limit, "sentences": [m.to_dict() for m in items]}


@router.get("/map", tags=["clusters"])
def sentence_map(request: Request, run_id: RunParam = None):
    """A sample of a run's sentences in 2D (UMAP on the run's kNN graph), laid out once per run
    in the background and cached; 202 with ``{"state": "computing"}`` until then."""
    found = _service(request).run_map(run_id)
    if found is None:
        return JSONResponse({"state": "computing", "run": run_id}, status_code=202, headers={"Retry-After": "1"})
    return found


# -- the page -------------------------------------------------------------------------


@router.get("/", include_in_schema=False)
def page():
    return FileResponse(str(static_dir() / "index.html"), media_type="text/html")
