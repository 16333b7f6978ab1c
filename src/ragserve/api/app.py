"""The FastAPI application factory.

Start-up never blocks on models: the lifespan opens the store and loads models in a background
thread, ``/healthz`` answers at once, and ``/readyz`` turns 200 when everything is loaded (503 with
the reason until then, or for good when a model is missing from the cache). A start-up failure
(a damaged database, a data directory another server holds, a missing model) calls
``on_startup_failure``: ``ragserve serve`` passes one that stops the server, which then exits
non-zero with the reason. After start-up, ``/readyz`` is 503 while the store cannot take writes
(a full disk, a damaged file: :class:`~ragserve.store.sqlite.health.ReportsHealth`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field

from anyio import to_thread
from fastapi import FastAPI

from ragserve import __version__
from ragserve.admission import Admission
from ragserve.api.admin import admin_router
from ragserve.api.auth import document_security
from ragserve.api.docs import install_docs
from ragserve.api.errors import install_error_handlers
from ragserve.api.jobs import jobs_router
from ragserve.api.mcp_mount import install_mcp
from ragserve.api.middleware import BodyLimitMiddleware
from ragserve.api.observability import install_observability
from ragserve.api.routes import collections_router, health_router, models_router
from ragserve.config import Settings
from ragserve.console import install_console
from ragserve.errors import RagserveError
from ragserve.jobs import Jobs
from ragserve.keys import KeyStore
from ragserve.metrics import AdmissionCollector
from ragserve.roles import has_store
from ragserve.service import RetrievalService
from ragserve.store.sqlite.health import ReportsHealth

log = logging.getLogger("ragserve.api")


@dataclass
class Readiness:
    """What /readyz reports; written by the loader thread, read by requests."""

    ready: bool = False
    reason: str = "starting"
    failed: bool = False
    started: float = field(default_factory=time.perf_counter)
    service: RetrievalService | None = None
    on_failure: Callable[[str], None] | None = None

    def running(self) -> RetrievalService | None:
        """The service once it is ready to serve; None while starting or after a failure."""
        return self.service if self.ready else None

    def status(self) -> tuple[bool, str]:
        """What ``/readyz`` answers: loaded, and the store able to take writes."""
        if not self.ready:
            return False, self.reason
        store = self.service.store if self.service is not None else None
        if isinstance(store, ReportsHealth):
            problem = store.write_problem()
            if problem is not None:
                return False, problem
        return True, "ready"


def _load(settings: Settings, state: Readiness, service: RetrievalService | None) -> None:
    try:
        if service is None:
            state.reason = "opening the store and loading models"
            service = RetrievalService.open(settings, load_models=False)
            state.service = service
        state.reason = "loading models"
        service.load_models()
        state.ready, state.reason = True, "ready"
        log.info("ready in %.2f s", time.perf_counter() - state.started)
    except RagserveError as exc:
        state.failed, state.reason = True, exc.message if exc.public else "start-up failed"
        log.error("start-up failed: %s", exc)
    except Exception as exc:  # the loader thread must not die silently
        state.failed, state.reason = True, f"start-up failed: {type(exc).__name__}: {exc}"
        log.exception("start-up failed")
    if state.failed and state.on_failure is not None:
        state.on_failure(state.reason)


def create_app(
    settings: Settings | None = None,
    service: RetrievalService | None = None,
    *,
    observability: bool = True,
    on_startup_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the app. Pass ``service`` to serve an existing core (tests, embedding in a program).

    ``on_startup_failure(reason)`` is called (on the loader thread) if start-up fails.

    ``observability=False`` leaves out ``/metrics``, ``/v1/stats``, the access log and the
    request-id middleware (``bench/metrics_overhead.py`` compares the two).
    """
    settings = settings or (service.settings if service else Settings())
    state = Readiness(service=service, on_failure=on_startup_failure)
    admission = Admission.from_settings(settings)
    stateful = has_store(settings.role)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Light blocking handlers run on AnyIO's worker threads; bound them (each keeps a store
        # connection and its page cache, a stack and malloc state: memory under load). Searches,
        # ingest and model calls are admitted per kind and run on threads of their own.
        to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        loader = threading.Thread(
            target=_load, args=(settings, state, service), name="ragserve-loader", daemon=True
        )
        loader.start()
        try:
            async with mcp_sessions():
                yield
        finally:
            if stateful:
                await to_thread.run_sync(app.state.jobs.close)  # the running job stops first
            admission.close()
            parsing = getattr(app.state, "parsing", None)
            if parsing is not None:  # the upload parser processes (routes._parsing)
                parsing.pool.close()
            loader.join(timeout=60)
            if state.service is not None and service is None:
                state.service.close()
            if stateful:
                app.state.keys.close()

    app = FastAPI(
        title="ragserve",
        version=__version__,
        summary="Hybrid BM25 + dense retrieval with int8 ONNX models on CPU.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc with their files served locally: install_docs
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.readiness = state
    app.state.admission = admission  # bounded queues per kind of work (routes.admitted)
    app.state.api_keys = [k.get_secret_value().encode() for k in settings.api_keys]
    if stateful:  # a model server keeps nothing: no control database (global keys only)
        app.state.keys = KeyStore(settings.data_dir)  # scoped keys (ragserve.keys)
        app.state.jobs = Jobs(  # ingest jobs (ragserve.jobs)
            settings.data_dir,
            lambda: state.service if state.ready else None,
            max_queued=settings.max_queued_jobs,
        )
    document_security(app)
    install_error_handlers(app)
    install_docs(app)
    app.include_router(health_router)
    mcp_sessions: Callable[[], AbstractAsyncContextManager[None]] = nullcontext
    if stateful:  # a model server has no collections (ragserve.roles)
        app.include_router(collections_router)
        app.include_router(jobs_router)
        mcp_sessions = install_mcp(app, settings.host)  # /mcp and /ui work on collections
        install_console(app)
    app.include_router(models_router)
    if stateful:
        app.include_router(admin_router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if observability:  # added last: the outermost middleware, so it sees every response
        metrics = install_observability(app, state.running)
        metrics.registry.register(AdmissionCollector(admission))
    return app
