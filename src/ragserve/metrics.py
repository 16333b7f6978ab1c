"""Every Prometheus metric of ragserve, and the recent-latency windows behind ``/v1/stats``.

One :class:`Metrics` object per app, with its own :class:`~prometheus_client.CollectorRegistry`
(never the global default), so several apps in one process (tests) do not collide.

Metrics (``GET /metrics``)::

    ragserve_http_request_duration_seconds{method,route}  histogram; route is the template,
                                                          e.g. /v1/collections/{name}/search
    ragserve_http_requests_total{method,route,status}     counter
    ragserve_http_errors_total{type,status}               counter; responses >= 400, type is
                                                          the error.type of the body
    ragserve_http_requests_in_flight                      gauge
    ragserve_search_stage_duration_seconds{stage}         histogram; embed, dense, lexical,
                                                          fuse, rerank, total (stages that ran)
    ragserve_cache_hits_total{cache}                      counter; query_embeddings,
    ragserve_cache_misses_total{cache}                    counter  rerank_scores
    ragserve_cache_entries{cache}                         gauge
    ragserve_cache_capacity{cache}                        gauge
    ragserve_batcher_pending{batcher}                     gauge; queue depth of a MicroBatcher
    ragserve_batcher_rejected_total{batcher}              counter; submissions refused (429)
    ragserve_batch_size{batcher}                          summary; _count = model calls,
                                                          _sum = items, quantiles: last 1024
    ragserve_admission_running{kind}                      gauge; requests holding a slot
    ragserve_admission_waiting{kind}                      gauge; requests queued for one
    ragserve_admission_service_seconds{kind}              gauge; EWMA of a slot's hold time
    ragserve_admission_admitted_total{kind}               counter; requests given a slot
    ragserve_admission_shed_total{kind,reason}            counter; 429s: refused (at once),
                                                          expired (queued past their time),
                                                          abandoned (client left while queued)
    ragserve_model_load_seconds{model,kind}               gauge
    ragserve_collection_documents{collection}             gauge
    ragserve_collection_chunks{collection}                gauge
    ragserve_ready                                        gauge; 1 once models are loaded
    process_resident_memory_bytes, process_cpu_seconds_total, ...  (prometheus-client's
                                                          process collector; Linux)

Histogram buckets resolve milliseconds: 0.5 ms .. 10 s. The gauges of models, caches, batchers
and collections are read from the service at scrape time (a custom collector), so the hot path
pays only for the request and stage histograms.

**One process.** ``ragserve serve`` runs a single uvicorn worker and has no ``--workers`` option;
the models, caches and batchers live in that process, and so do these metrics. Prometheus
multiprocess mode is deliberately not supported: running several workers would also mean
several copies of every model in memory. Scale out with more instances behind a load balancer,
each scraped on its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ragserve.errors import RagserveError

if TYPE_CHECKING:
    from ragserve.admission import Admission
    from ragserve.models.manager import ModelsSnapshot
    from ragserve.service import RetrievalService

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "SEARCH_STAGES", "Metrics"]

#: Seconds; fine enough for millisecond stages, wide enough for a slow rerank.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
SEARCH_STAGES = ("embed", "dense", "lexical", "fuse", "rerank", "total")
#: The route label of requests no route matched (404s, bodies refused before routing).
UNROUTED = "unrouted"


# ------------------------------------------------------------------------------ windows


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Exact percentiles (ms) of the observations in a window."""

    count: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "p50_ms": self.p50,
            "p95_ms": self.p95,
            "p99_ms": self.p99,
            "mean_ms": self.mean,
            "max_ms": self.max,
        }


def percentiles(values_ms: Sequence[float] | npt.NDArray[np.float64]) -> Percentiles | None:
    """p50/p95/p99 by linear interpolation between order statistics (numpy's default)."""
    arr = np.asarray(values_ms, dtype=np.float64)
    if arr.size == 0:
        return None
    p50, p95, p99 = (float(x) for x in np.percentile(arr, [50, 95, 99]))
    return Percentiles(
        int(arr.size),
        round(p50, 3),
        round(p95, 3),
        round(p99, 3),
        round(float(arr.mean()), 3),
        round(float(arr.max()), 3),
    )


class LatencyWindow:
    """The last ``size`` observations of one series that are at most ``max_age`` seconds old.

    ``observe`` is one ``deque.append`` (atomic under the GIL, no lock); a snapshot copies the
    deque, so readers never block writers.
    """

    __slots__ = ("_items", "max_age")

    def __init__(self, size: int = 10_000, max_age: float = 300.0) -> None:
        self._items: deque[tuple[float, float]] = deque(maxlen=size)
        self.max_age = max_age

    def observe(self, ms: float, now: float) -> None:
        self._items.append((now, ms))

    def values(self, now: float | None = None) -> npt.NDArray[np.float64]:
        """The observations (ms) still in the window, oldest first."""
        items = list(self._items)
        if not items:
            return np.zeros(0)
        arr = np.asarray(items, dtype=np.float64)
        cutoff = (time.monotonic() if now is None else now) - self.max_age
        kept: npt.NDArray[np.float64] = arr[arr[:, 0] >= cutoff, 1]
        return kept

    def summary(self, now: float | None = None) -> Percentiles | None:
        return percentiles(self.values(now))


class Windows:
    """Named :class:`LatencyWindow` s, created on first use."""

    def __init__(self, size: int, max_age: float) -> None:
        self.size = size
        self.max_age = max_age
        self._series: dict[str, LatencyWindow] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LatencyWindow:
        window = self._series.get(name)
        if window is None:
            with self._lock:
                window = self._series.setdefault(name, LatencyWindow(self.size, self.max_age))
        return window

    def summaries(self, now: float | None = None) -> dict[str, Percentiles]:
        now = time.monotonic() if now is None else now
        out = {}
        for name, window in sorted(self._series.items()):
            summary = window.summary(now)
            if summary is not None:
                out[name] = summary
        return out


# ------------------------------------------------------------------------------ metrics


def route_key(method: str, route: str) -> str:
    """The name of a route's latency window in ``/v1/stats``: ``"POST /v1/..."``."""
    return f"{method} {route}"


class Metrics:
    """The metrics of one app: Prometheus instruments plus recent-latency windows.

    ``service`` returns the running :class:`RetrievalService` (None while starting); the
    scrape-time collector reads models, caches, batchers and collections from it.
    """

    def __init__(
        self,
        service: Callable[[], RetrievalService | None] = lambda: None,
        *,
        window_size: int = 10_000,
        window_seconds: float = 300.0,
        process_metrics: bool = True,
    ) -> None:
        self.registry = CollectorRegistry()
        self.started = time.monotonic()
        r = self.registry
        self.request_latency = Histogram(
            "ragserve_http_request_duration_seconds",
            "Time from request start to the end of the response, per route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "ragserve_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=r,
        )
        self.errors = Counter(
            "ragserve_http_errors",
            "Error responses (status >= 400), by error type and status.",
            ["type", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            "ragserve_http_requests_in_flight", "HTTP requests being handled now.", registry=r
        )
        self.stage_latency = Histogram(
            "ragserve_search_stage_duration_seconds",
            "Time spent in each stage of a search (stages that ran).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        if process_metrics:
            ProcessCollector(registry=r)
        r.register(ServiceCollector(service))

        self.routes = Windows(window_size, window_seconds)
        self.stages = Windows(window_size, window_seconds)
        #: (time, is_error) of recent requests, for the error rate in /v1/stats.
        self.outcomes: deque[tuple[float, bool]] = deque(maxlen=window_size)
        self.window_seconds = window_seconds
        self._route_children: dict[tuple[str, str], tuple[Histogram, LatencyWindow]] = {}
        self._count_children: dict[tuple[str, str, int], Counter] = {}
        self._stage_children: dict[str, tuple[Histogram, LatencyWindow]] = {}
        for stage in SEARCH_STAGES:
            self._stage(stage)

    # -- hot path: one request ----------------------------------------------------------

    def observe_request(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        *,
        error_type: str | None = None,
        stages_ms: Mapping[str, float] | None = None,
    ) -> None:
        now = time.monotonic()
        pair = self._route_children.get((method, route))
        if pair is None:
            pair = (
                self.request_latency.labels(method, route),
                self.routes.get(route_key(method, route)),
            )
            self._route_children[(method, route)] = pair
        pair[0].observe(seconds)
        pair[1].observe(seconds * 1000.0, now)
        counter = self._count_children.get((method, route, status))
        if counter is None:
            counter = self.requests.labels(method, route, str(status))
            self._count_children[(method, route, status)] = counter
        counter.inc()
        is_error = status >= 400
        if is_error:
            self.errors.labels(error_type or "unknown", str(status)).inc()
        self.outcomes.append((now, is_error))
        if stages_ms:
            self.observe_stages(stages_ms, now)

    def observe_stages(self, stages_ms: Mapping[str, float], now: float | None = None) -> None:
        """Stage timings of one search; stages that did not run (0 ms) are skipped."""
        now = time.monotonic() if now is None else now
        for stage, ms in stages_ms.items():
            if ms > 0:
                histogram, window = self._stage(stage)
                histogram.observe(ms / 1000.0)
                window.observe(ms, now)

    def _stage(self, stage: str) -> tuple[Histogram, LatencyWindow]:
        pair = self._stage_children.get(stage)
        if pair is None:
            pair = (self.stage_latency.labels(stage), self.stages.get(stage))
            self._stage_children[stage] = pair
        return pair

    # -- reading ---------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def error_rate(self, now: float | None = None) -> tuple[int, int]:
        """(requests, errors) in the recent window."""
        cutoff = (time.monotonic() if now is None else now) - self.window_seconds
        recent = [err for t, err in list(self.outcomes) if t >= cutoff]
        return len(recent), sum(recent)


# ------------------------------------------------------------------------------ scrape time


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:  # noqa: PTH123 - one small read
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class AdmissionCollector(Collector):
    """Reads the admission gates (:mod:`ragserve.admission`) at scrape time."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        kind = ["kind"]
        running = GaugeMetricFamily(
            "ragserve_admission_running", "Requests holding a slot.", labels=kind
        )
        waiting = GaugeMetricFamily(
            "ragserve_admission_waiting", "Requests queued for a slot.", labels=kind
        )
        service = GaugeMetricFamily(
            "ragserve_admission_service_seconds",
            "EWMA of the time a slot is held (absent until a request has finished).",
            labels=kind,
        )
        admitted = CounterMetricFamily(
            "ragserve_admission_admitted", "Requests given a slot.", labels=kind
        )
        shed = CounterMetricFamily(
            "ragserve_admission_shed",
            "Requests answered 429: refused at once, expired in the queue, or abandoned by "
            "their client while queued.",
            labels=["kind", "reason"],
        )
        for snap in self._admission.snapshot():
            running.add_metric([snap.kind], snap.running)
            waiting.add_metric([snap.kind], snap.waiting)
            if snap.service_seconds is not None:
                service.add_metric([snap.kind], snap.service_seconds)
            admitted.add_metric([snap.kind], snap.admitted)
            shed.add_metric([snap.kind, "refused"], snap.rejected)
            shed.add_metric([snap.kind, "expired"], snap.expired)
            shed.add_metric([snap.kind, "abandoned"], snap.abandoned)
        yield from (running, waiting, service, admitted, shed)


class ServiceCollector(Collector):
    """Reads models, caches, batchers and collections from the service at scrape time."""

    def __init__(self, service: Callable[[], RetrievalService | None]) -> None:
        self._service = service

    def describe(self) -> Iterable[Metric]:
        return []  # dynamic: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        service = self._service()
        ready = GaugeMetricFamily("ragserve_ready", "1 once the models are loaded and serving.")
        ready.add_metric([], 0.0 if service is None else 1.0)
        yield ready
        if service is None:
            return
        snapshot = service.models.snapshot()
        yield from self._models(snapshot)
        yield from self._caches(snapshot)
        yield from self._batchers(snapshot)
        yield from self._collections(service)

    def _models(self, snapshot: ModelsSnapshot) -> Iterator[Metric]:
        loads = GaugeMetricFamily(
            "ragserve_model_load_seconds",
            "Time taken to load each model.",
            labels=["model", "kind"],
        )
        for record in snapshot.loads:
            loads.add_metric([record.name, record.kind], record.seconds)
        yield loads

    def _caches(self, snapshot: ModelsSnapshot) -> Iterator[Metric]:
        labels = ["cache"]
        hits = CounterMetricFamily("ragserve_cache_hits", "Cache lookups that hit.", labels=labels)
        misses = CounterMetricFamily(
            "ragserve_cache_misses", "Cache lookups that missed.", labels=labels
        )
        entries = GaugeMetricFamily("ragserve_cache_entries", "Entries held.", labels=labels)
        capacity = GaugeMetricFamily("ragserve_cache_capacity", "Most entries held.", labels=labels)
        for stats in snapshot.caches:
            hits.add_metric([stats.name], stats.hits)
            misses.add_metric([stats.name], stats.misses)
            entries.add_metric([stats.name], stats.size)
            capacity.add_metric([stats.name], stats.capacity)
        yield from (hits, misses, entries, capacity)

    def _batchers(self, snapshot: ModelsSnapshot) -> Iterator[Metric]:
        labels = ["batcher"]
        pending = GaugeMetricFamily(
            "ragserve_batcher_pending", "Items waiting for a model call.", labels=labels
        )
        rejected = CounterMetricFamily(
            "ragserve_batcher_rejected", "Submissions refused with 429.", labels=labels
        )
        sizes = Metric(
            "ragserve_batch_size",
            "Items per model call: count = calls, sum = items, quantiles over the last 1024 calls.",
            "summary",
        )
        for b in snapshot.batchers:
            pending.add_metric([b.name], b.pending)
            rejected.add_metric([b.name], b.rejected)
            for q, value in b.recent_sizes.items():
                sizes.add_sample(
                    "ragserve_batch_size", {"batcher": b.name, "quantile": str(q)}, value
                )
            sizes.add_sample("ragserve_batch_size_count", {"batcher": b.name}, b.batches)
            sizes.add_sample("ragserve_batch_size_sum", {"batcher": b.name}, b.items)
        yield from (pending, rejected, sizes)

    def _collections(self, service: RetrievalService) -> Iterator[Metric]:
        if service.settings.role == "models":  # a model server has no collections
            return
        try:
            infos = service.list_collections()
        except RagserveError as exc:  # a store that is down must not break the scrape
            log.warning("metrics: cannot list collections: %s", exc)
            return
        documents = GaugeMetricFamily(
            "ragserve_collection_documents", "Documents per collection.", labels=["collection"]
        )
        chunks = GaugeMetricFamily(
            "ragserve_collection_chunks", "Chunks per collection.", labels=["collection"]
        )
        for info in infos:
            documents.add_metric([info.name], info.documents)
            chunks.add_metric([info.name], info.chunks)
        yield from (documents, chunks)
