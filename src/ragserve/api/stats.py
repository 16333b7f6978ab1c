"""``GET /metrics`` (Prometheus) and ``GET /v1/stats`` (a human view of the same process).

``/v1/stats`` reports exact p50/p95/p99 per route and per search stage over a recent window
(the last 10,000 observations of each series that are at most 5 minutes old; histogram buckets
are too coarse for this), with cache hit rates, the recent error rate, memory, model load times,
batcher and collection figures. Both routes sit behind the API key when keys are configured
(Prometheus sends one with ``authorization: {credentials: KEY}`` in its scrape config).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from ragserve.api.auth import require_key
from ragserve.api.schemas import ErrorResponse
from ragserve.errors import RagserveError
from ragserve.metrics import CONTENT_TYPE_LATEST, Metrics, Percentiles, rss_bytes
from ragserve.service import RetrievalService

monitoring_router = APIRouter(
    tags=["monitoring"],
    dependencies=[Depends(require_key)],
    responses={
        401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
        403: {"model": ErrorResponse, "description": "The key does not reach every collection"},
    },
)


class Latency(BaseModel):
    count: int = Field(description="Observations in the window.")
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float


class Window(BaseModel):
    max_observations: int = Field(description="Most observations kept per series.")
    max_age_seconds: float = Field(description="Oldest observation kept.")


class Requests(BaseModel):
    recent: int = Field(description="Requests answered in the window.")
    recent_errors: int = Field(description="Of which responses with status >= 400.")
    error_rate: float | None


class CacheView(BaseModel):
    capacity: int
    entries: int
    hits: int
    misses: int
    hit_rate: float | None


class ModelView(BaseModel):
    kind: str
    load_seconds: float


class BatcherView(BaseModel):
    pending: int = Field(description="Items waiting for a model call (queue depth).")
    max_pending: int
    batches: int
    items: int
    largest: int
    rejected: int
    mean_size: float | None
    recent_p50_size: float | None = Field(description="Median size of the last 1024 batches.")
    recent_p95_size: float | None


class CollectionView(BaseModel):
    documents: int
    chunks: int


class Stats(BaseModel):
    ready: bool
    uptime_seconds: float
    window: Window
    requests: Requests
    routes: dict[str, Latency] = Field(description='By "METHOD /route/template".')
    stages: dict[str, Latency] = Field(description="Search stages that ran.")
    caches: dict[str, CacheView]
    memory_rss_bytes: int | None
    models: dict[str, ModelView]
    batchers: dict[str, BatcherView]
    collections: dict[str, CollectionView]


def _latency(p: Percentiles) -> Latency:
    return Latency(**p.as_dict())


def build_stats(metrics: Metrics, service: RetrievalService | None) -> Stats:
    """Everything ``/v1/stats`` reports, read now."""
    now = time.monotonic()
    recent, errors = metrics.error_rate(now)
    stats = Stats(
        ready=service is not None,
        uptime_seconds=round(now - metrics.started, 3),
        window=Window(max_observations=metrics.routes.size, max_age_seconds=metrics.routes.max_age),
        requests=Requests(
            recent=recent,
            recent_errors=errors,
            error_rate=round(errors / recent, 6) if recent else None,
        ),
        routes={k: _latency(v) for k, v in metrics.routes.summaries(now).items()},
        stages={k: _latency(v) for k, v in metrics.stages.summaries(now).items()},
        caches={},
        memory_rss_bytes=rss_bytes(),
        models={},
        batchers={},
        collections={},
    )
    if service is None:
        return stats
    snapshot = service.models.snapshot()
    for c in snapshot.caches:
        rate = None if c.hit_rate is None else round(c.hit_rate, 6)
        stats.caches[c.name] = CacheView(
            capacity=c.capacity, entries=c.size, hits=c.hits, misses=c.misses, hit_rate=rate
        )
    for record in snapshot.loads:
        stats.models[record.name] = ModelView(
            kind=record.kind, load_seconds=round(record.seconds, 4)
        )
    for b in snapshot.batchers:
        mean = b.mean_size
        stats.batchers[b.name] = BatcherView(
            pending=b.pending,
            max_pending=b.max_pending,
            batches=b.batches,
            items=b.items,
            largest=b.largest,
            rejected=b.rejected,
            mean_size=None if mean is None else round(mean, 3),
            recent_p50_size=b.recent_sizes.get(0.5),
            recent_p95_size=b.recent_sizes.get(0.95),
        )
    try:
        for info in service.list_collections():
            stats.collections[info.name] = CollectionView(
                documents=info.documents, chunks=info.chunks
            )
    except RagserveError:
        pass  # the store is down: the rest of the page still helps
    return stats


@monitoring_router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics of this process (text exposition format)."""
    metrics: Metrics = request.app.state.metrics
    body = await run_in_threadpool(metrics.render)  # reads the store and /proc: off the loop
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@monitoring_router.get("/v1/stats", operation_id="stats", response_model=Stats)
def stats_endpoint(request: Request) -> Stats:
    """Recent latency percentiles per route and stage, cache hit rates, errors, memory, models."""
    return build_stats(request.app.state.metrics, request.app.state.readiness.running())
