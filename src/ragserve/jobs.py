"""Ingest jobs: a long ingest (or a named source's sync) that runs after its request returned.

A job is submitted with its documents already parsed (the request holds them), answered at
once with its id, and run on the job thread (one job at a time by default: a second bulk ingest
would only share the same cores). Its progress — documents done and failed, chunks stored, the
rate and the time left — and its per-document errors are kept in the control database
(:mod:`ragserve.control`), written every half second and at the end, so they outlive the
process. Each document is stored all or nothing, so what a job reported as done is in the
store, whatever happens next.

A job can be cancelled: it stops between two groups of documents (those stored stay; a
cancelled sync deletes nothing). A job that was queued or running when its server stopped
(a crash, a SIGKILL, a shutdown) is reported as ``interrupted``: each server run has an id, and
a job left ``queued`` / ``running`` by another run is one that will never finish.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragserve.control import ControlDB
from ragserve.errors import NotFound, Overloaded, RagserveError
from ragserve.ingest.sources import Item
from ragserve.service import IngestResult, RetrievalService

log = logging.getLogger(__name__)

State = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
LIVE: tuple[State, ...] = ("queued", "running")
#: Per-document errors a job keeps (the count of failures goes on past it).
MAX_ERRORS = 1000
#: Seconds between two writes of a running job's progress.
SAVE_EVERY = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    collection TEXT NOT NULL,
    source TEXT,
    state TEXT NOT NULL,
    total INTEGER NOT NULL,
    counts TEXT NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_at);
CREATE TABLE IF NOT EXISTS job_errors (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    document TEXT NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (job_id, n)
);
"""
COUNTS = ("done", "created", "updated", "unchanged", "failed", "deleted", "chunks")


@dataclass
class Job:
    """One job's record; the live one is updated by its thread (read it under ``lock``)."""

    id: str
    collection: str
    total: int
    source: str | None = None
    state: State = "queued"
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    errors: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, result: IngestResult) -> None:
        with self.lock:
            c = self.counts
            c["done"] += 1
            c["created" if result.status == "created" else result.status] += 1
            c["chunks"] += result.chunks if result.status != "unchanged" else 0
            if result.status == "failed" and len(self.errors) < MAX_ERRORS:
                self.errors.append((result.id, result.error or "failed"))

    def view(self) -> dict[str, Any]:
        """Progress as the API shows it: counts, fraction done, rate and time left."""
        with self.lock:
            counts = dict(self.counts)
            errors = list(self.errors)
        end = self.finished_at or time.time()
        elapsed = max(end - self.started_at, 1e-9) if self.started_at else 0.0
        rate = counts["done"] / elapsed if elapsed else 0.0
        left = max(self.total - counts["done"], 0)
        eta = None if self.state not in LIVE or not rate else round(left / rate, 1)
        if self.state not in LIVE:
            eta = 0.0 if self.state == "succeeded" else None
        return {
            "id": self.id,
            "collection": self.collection,
            "source": self.source,
            "state": self.state,
            "total": self.total,
            "progress": round(counts["done"] / self.total, 4) if self.total else 1.0,
            **counts,
            "rate_per_s": round(rate, 2),
            "eta_s": eta,
            "error": self.error,
            "errors": [{"document": d, "error": e} for d, e in errors],
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class JobStore:
    """Jobs in the control database."""

    def __init__(self, data_dir: Path) -> None:
        self._db = ControlDB(data_dir, _SCHEMA)

    def close(self) -> None:
        self._db.close()

    def save(self, job: Job, run: str, *, errors_from: int = 0) -> None:
        with job.lock:
            counts = dict(job.counts)
            new_errors = job.errors[errors_from:]
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, run, collection, source, state, total, counts, error, "
                "created_at, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET state = excluded.state, counts = excluded.counts,"
                " error = excluded.error, started_at = excluded.started_at, "
                "finished_at = excluded.finished_at",
                (job.id, run, job.collection, job.source, job.state, job.total,
                 json.dumps(counts), job.error, job.created_at, job.started_at, job.finished_at),
            )  # fmt: skip
            conn.executemany(
                "INSERT OR IGNORE INTO job_errors (job_id, n, document, error) VALUES (?,?,?,?)",
                [(job.id, errors_from + i, d, e) for i, (d, e) in enumerate(new_errors)],
            )

    def load(self, job_id: str, run: str) -> Job | None:
        """The stored job; one left live by another server run is ``interrupted``."""
        with self._db.reading() as conn:
            row = conn.execute(
                "SELECT id, run, collection, source, state, total, counts, error, created_at, "
                "started_at, finished_at FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                return None
            errors = conn.execute(
                "SELECT document, error FROM job_errors WHERE job_id = ? ORDER BY n", (job_id,)
            ).fetchall()
        job = Job(row[0], row[2], row[5], row[3], row[4], json.loads(row[6]),
                  [(d, e) for d, e in errors], row[7], row[8], row[9], row[10])  # fmt: skip
        if job.state in LIVE and row[1] != run:
            job.state = "interrupted"
            job.error = "the server stopped while this job ran; the documents it counted are stored"
        return job

    def ids(self, limit: int) -> list[str]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [r[0] for r in rows]


@dataclass
class _Saved:
    """When a running job's progress was last written, and how many errors were."""

    at: float
    errors: int = 0


class Jobs:
    """The server's jobs: submitted, run one at a time on a thread of their own, cancelled."""

    def __init__(
        self,
        data_dir: Path,
        service: Callable[[], RetrievalService | None],
        *,
        workers: int = 1,
        max_queued: int = 16,
    ) -> None:
        self.store = JobStore(data_dir)
        self.run = secrets.token_hex(8)  # this server run: jobs live in another are interrupted
        self._service = service
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ragserve-job")
        self._live: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._max_queued = max_queued
        self._closed = False

    def submit(self, collection: str, items: Sequence[Item], source: str | None = None) -> Job:
        """Queue a job over ``items`` (a sync of ``source`` when given); 429 when too many wait."""
        svc = self._service()
        if svc is None:
            from ragserve.errors import Unavailable

            raise Unavailable("not ready: jobs start once the server is ready")
        svc.get_collection(collection)  # 404 now, not in the job
        with self._lock:
            queued = sum(1 for j in self._live.values() if j.state == "queued")
            if queued >= self._max_queued or self._closed:
                raise Overloaded(f"{queued} ingest jobs are waiting already; retry later", 5.0)
            job = Job(f"job-{secrets.token_hex(8)}", collection, len(items), source)
            self._live[job.id] = job
        self.store.save(job, self.run)
        self._pool.submit(self._execute, svc, job, items)
        return job

    def find(self, job_id: str) -> Job | None:
        with self._lock:
            live = self._live.get(job_id)
        return live if live is not None else self.store.load(job_id, self.run)

    def get(self, job_id: str) -> Job:
        job = self.find(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def list(self, limit: int = 100) -> list[Job]:
        return [j for j in (self.find(i) for i in self.store.ids(limit)) if j is not None]

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop (a finished one is returned as it is)."""
        job = self.get(job_id)
        job.cancel.set()
        return job

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, stop the running one (it is then ``interrupted``), wait for it."""
        with self._lock:
            self._closed = True
            live = list(self._live.values())
        for job in live:
            job.error = "the server stopped while this job was running"
            job.cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        for job in live:
            while job.state in LIVE and time.monotonic() < deadline:
                if job.state == "queued":  # its future was cancelled: it never runs
                    self._finish(job, "interrupted")
                    break
                time.sleep(0.01)
        self.store.close()

    # ------------------------------------------------------------------ the job thread

    def _execute(self, svc: RetrievalService, job: Job, items: Sequence[Item]) -> None:
        if job.cancel.is_set():
            self._finish(job, "interrupted" if self._closed else "cancelled")
            return
        job.state, job.started_at = "running", time.time()
        self.store.save(job, self.run)
        saved = _Saved(time.monotonic())

        def progress(result: IngestResult) -> None:
            job.record(result)
            if time.monotonic() - saved.at >= SAVE_EVERY:
                self.store.save(job, self.run, errors_from=saved.errors)
                saved.at, saved.errors = time.monotonic(), len(job.errors)

        try:
            if job.source is not None:
                from ragserve.sync import sync_documents

                report = sync_documents(
                    svc, job.collection, job.source, items,
                    on_result=progress, cancelled=job.cancel.is_set,
                )  # fmt: skip
                with job.lock:
                    job.counts["deleted"] = report.deleted
            else:
                for result in svc.ingest_iter(job.collection, items):
                    progress(result)
                    if job.cancel.is_set():
                        break
        except RagserveError as exc:
            job.error = exc.message if exc.public else "internal error"
            if not exc.public:
                log.error("job %s failed: %s", job.id, exc, exc_info=exc)
            self._finish(job, "failed", saved.errors)
            return
        except Exception:  # the job thread must record the failure, not die silently
            log.exception("job %s failed", job.id)
            job.error = "internal error"
            self._finish(job, "failed", saved.errors)
            return
        stopped = job.cancel.is_set() and job.counts["done"] < job.total
        state: State = "succeeded"
        if stopped:
            state = "interrupted" if self._closed else "cancelled"
        self._finish(job, state, saved.errors)

    def _finish(self, job: Job, state: State, errors_from: int = 0) -> None:
        job.state, job.finished_at = state, time.time()
        self.store.save(job, self.run, errors_from=errors_from)
        with self._lock:
            self._live.pop(job.id, None)
