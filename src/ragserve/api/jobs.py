"""Ingest job routes: submit (202), follow, list, cancel. Thin over :mod:`ragserve.jobs`."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragserve.api.auth import principal_of, require_key
from ragserve.api.routes import (
    _DOCUMENTS_BODY,
    _ERRORS,
    CollectionName,
    Service,
    _documents_from_request,
    documents_of,
)
from ragserve.errors import InvalidInput, Unavailable
from ragserve.ingest.sources import Item
from ragserve.jobs import Job, Jobs
from ragserve.service import RetrievalService

jobs_router = APIRouter(
    prefix="/v1",
    tags=["jobs"],
    dependencies=[Depends(require_key)],
    responses={c: _ERRORS[c] for c in (400, 401, 403, 404, 413, 422, 429, 503)},
)


class JobError(BaseModel):
    document: str
    error: str


class JobOut(BaseModel):
    id: str
    collection: str
    source: str | None = Field(description="The named source a sync job makes the set of.")
    state: Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
    total: int = Field(description="Documents (and per-document failures) the job was given.")
    progress: float = Field(description="done / total, 0 to 1.")
    done: int
    created: int
    updated: int
    unchanged: int
    failed: int
    deleted: int = Field(description="Documents a sync job deleted (not in the set).")
    chunks: int = Field(description="Chunks stored (embedded) so far.")
    rate_per_s: float = Field(description="Documents done per second since the job started.")
    eta_s: float | None = Field(description="Seconds left at that rate (null: not known).")
    error: str | None
    errors: list[JobError] = Field(description="Per-document errors (the first 1,000).")
    created_at: float
    started_at: float | None
    finished_at: float | None


class JobList(BaseModel):
    jobs: list[JobOut]


_JOB_BODY = json.loads(json.dumps(_DOCUMENTS_BODY))
_JOB_BODY["requestBody"]["content"]["application/json"]["schema"]["properties"]["source"] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 1024,
    "description": "Make this named source's documents exactly these (a sync): the source's "
    "documents not in the body are deleted once all are stored.",
}


def _jobs(request: Request) -> Jobs:
    jobs: Jobs | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise Unavailable("ingest jobs are not available on this server")
    return jobs


JobsDep = Annotated[Jobs, Depends(_jobs)]
JobId = Annotated[str, Path(min_length=1, max_length=64, description="The job's id.")]


def _out(job: Job) -> JobOut:
    return JobOut.model_validate(job.view())


def _with_source(raw: bytes, svc: RetrievalService, most: int) -> tuple[str | None, list[Item]]:
    try:
        data: Any = json.loads(raw)
    except ValueError as exc:
        raise StarletteHTTPException(400, f"request body is not valid JSON: {exc}") from None
    source = data.pop("source", None) if isinstance(data, dict) else None
    if source is not None and (not isinstance(source, str) or not 1 <= len(source) <= 1024):
        raise InvalidInput("source: a string of 1-1024 characters")
    return source, documents_of(data, svc, most)


@jobs_router.post(
    "/collections/{name}/jobs",
    operation_id="create_job",
    response_model=JobOut,
    status_code=202,
    openapi_extra=_JOB_BODY,
)
async def create_job(
    name: CollectionName, request: Request, svc: Service, jobs: JobsDep
) -> JSONResponse:
    """Ingest documents (JSON records or uploaded files) in the background: 202 with the job,
    whose ``Location`` is followed with ``GET /v1/jobs/{id}``. With ``"source"``, a sync."""
    most = svc.settings.max_documents_per_job
    source = None
    if request.headers.get("content-type", "").startswith("application/json"):
        raw = await request.body()
        source, items = await to_thread.run_sync(_with_source, raw, svc, most)
    else:
        items = await _documents_from_request(request, svc, most)
    job = await to_thread.run_sync(lambda: jobs.submit(name, items, source))
    return JSONResponse(
        _out(job).model_dump(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
    )


@jobs_router.get("/jobs", operation_id="list_jobs", response_model=JobList)
def list_jobs(jobs: JobsDep, request: Request) -> JobList:
    """The latest 100 jobs (of the collections the key reaches), newest first."""
    key = principal_of(request)
    return JobList(jobs=[_out(j) for j in jobs.list() if key.reaches(j.collection)])


@jobs_router.get("/jobs/{job_id}", operation_id="get_job", response_model=JobOut)
def get_job(job_id: JobId, jobs: JobsDep) -> JobOut:
    """A job's state and progress: documents done and failed, chunks, rate, time left, errors."""
    return _out(jobs.get(job_id))


@jobs_router.post(
    "/jobs/{job_id}/cancel", operation_id="cancel_job", response_model=JobOut, status_code=202
)
def cancel_job(job_id: JobId, jobs: JobsDep) -> JobOut:
    """Ask a job to stop between two groups of documents (those stored stay)."""
    return _out(jobs.cancel(job_id))
