"""HTTP routes for curation edits (merge, split, label, unmerge) and the granularity control
(a recluster at another resolution). Edits go through the single writer like every write and
answer with the JSON of the matching ``clusterer ... --json`` command."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

router = APIRouter()

ClusterId = Annotated[int, Path(ge=0, le=2**31 - 1, description="Cluster id")]


class MergeBody(BaseModel):
    ids: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(description="Cluster ids to merge (two or more)")


class SplitBody(BaseModel):
    resolution: float | None = Field(None, gt=0, description="Leiden resolution on the cluster's kNN graph (default 1)")


class LabelBody(BaseModel):
    label: str = Field(max_length=1000, description="The cluster's name")


class ReclusterBody(BaseModel):
    resolution: float | None = Field(None, gt=0, description="Leiden resolution (default: the latest run's)")


async def _edit(request: Request, work):
    svc = request.app.state.service
    await asyncio.to_thread(svc.require_ready)
    edit = await asyncio.wrap_future(svc.writer.call(lambda: work(svc.store)))
    return edit.to_dict()


@router.post("/clusters/merge", tags=["curation"])
async def merge(request: Request, body: MergeBody):
    """As `clusterer merge ID ID... --json`: one cluster with the largest's id."""
    return await _edit(request, lambda store: store.merge(body.ids))


@router.post("/clusters/{cluster_id}/split", tags=["curation"])
async def split(request: Request, cluster_id: ClusterId, body: SplitBody | None = None):
    """As `clusterer split ID [--resolution R] --json`: the parts get new ids."""
    resolution = body.resolution if body else None
    return await _edit(request, lambda store: store.split(cluster_id, resolution))


@router.post("/clusters/{cluster_id}/unmerge", tags=["curation"])
async def unmerge(request: Request, cluster_id: ClusterId):
    """As `clusterer unmerge ID --json`: the newest merge into the cluster is undone."""
    return await _edit(request, lambda store: store.unmerge(cluster_id))


@router.put("/clusters/{cluster_id}/label", tags=["curation"])
async def set_label(request: Request, cluster_id: ClusterId, body: LabelBody):
    """As `clusterer label ID TEXT --json`."""
    return await _edit(request, lambda store: store.label(cluster_id, body.label))


@router.delete("/clusters/{cluster_id}/label", tags=["curation"])
async def clear_label(request: Request, cluster_id: ClusterId):
    """As `clusterer label ID --clear --json`."""
    return await _edit(request, lambda store: store.label(cluster_id, None))


@router.post("/recluster", tags=["runs"], status_code=202)
def recluster(request: Request, body: ReclusterBody | None = None):
    """A recluster in the background (the granularity control): the latest run's method and
    parameters, ``resolution`` on top, warm-started, edits kept; 202 and the job to follow."""
    from clusterer.service import methods

    svc = request.app.state.service
    store = svc.require_ready()
    method, params = store.recluster_args(resolution=body.resolution if body else None)
    methods.resolve(method, **{k: v for k, v in params.items() if k not in ("warm_start", "where", "graph_from")})
    job = svc.writer.cluster(method, params)
    return JSONResponse({"job": job.to_dict()}, status_code=202, headers={"Location": f"/jobs/{job.id}"})
