"""Request observability as pure ASGI middleware: metrics, the access log, X-Request-ID.

For every HTTP request, :class:`ObservabilityMiddleware`:

* takes the client's ``X-Request-ID`` when it is printable ASCII of at most 128 characters, or
  makes one, and echoes it on the response (errors included, even an unhandled exception's 500);
* times the request from its start to the end of the response and records it under the route
  *template* (``/v1/collections/{name}/search``, never the raw path) in :mod:`ragserve.metrics`;
* records the search stage timings a handler left in ``request.state.timings_ms``;
* counts error responses by the ``error.type`` of their body and by status;
* writes one JSON line to the ``ragserve.access`` logger.

It is plain ASGI (no ``BaseHTTPMiddleware``): it wraps ``send`` and never buffers a body, except
the first 4 KiB of an error response, to read its type. Cache lookups made while a request is
handled are tallied through a context variable (:func:`ragserve.caching.tally_cache_lookups`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragserve.api.errors import error_response
from ragserve.caching import tally_cache_lookups
from ragserve.metrics import UNROUTED, Metrics
from ragserve.service import RetrievalService

ACCESS_LOGGER = "ragserve.access"
REQUEST_ID_HEADER = b"x-request-id"
#: Request state key a handler sets to report stage timings (``request.state.timings_ms``).
TIMINGS_KEY = "timings_ms"
_VALID_ID = re.compile(rb"[\x20-\x7e]{1,128}")
_ERROR_BODY_LIMIT = 4096
#: Methods kept as metric labels; any other becomes "OTHER" (clients choose the method, and
#: every distinct label value is a new time series).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it is printable ASCII, 1..128 characters; else a new id."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _VALID_ID.fullmatch(value) and value.strip():
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


def _error_type(body: bytes | None) -> str | None:
    if not body:
        return None
    try:
        parsed = json.loads(body)
        kind = parsed["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None
    return kind if isinstance(kind, str) else None


def _timestamp(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


class ObservabilityMiddleware:
    """Metrics, access log and request id for each HTTP request (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, logger: logging.Logger | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log = logger or logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        wall = time.time()
        request_id = request_id_from(scope["headers"])
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500
        response_started = False
        error_body: bytearray | None = None

        async def observed_send(message: Message) -> None:
            nonlocal status, response_started, error_body
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), id_header]
                if status >= 400:
                    error_body = bytearray()
            elif error_body is not None and len(error_body) < _ERROR_BODY_LIMIT:
                error_body += message.get("body", b"")
            await send(message)

        self.metrics.in_flight.inc()
        try:
            with tally_cache_lookups() as tally:
                await self.app(scope, receive, observed_send)
        except Exception:
            # Unhandled: Starlette's outer error middleware logs it and would answer 500 without
            # our header. Answer first, in the one error shape, with the request id.
            if not response_started:
                response = error_response(500, "internal_error", "internal server error")
                await response(scope, receive, observed_send)
            raise
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            route_obj = scope.get("route")
            route = getattr(route_obj, "path", None) or UNROUTED
            stages = state.get(TIMINGS_KEY)
            error_type = _error_type(bytes(error_body)) if error_body is not None else None
            if status >= 400 and error_type is None:
                error_type = "unknown"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.observe_request(
                method, route, status, seconds, error_type=error_type, stages_ms=stages
            )
            if self.log.isEnabledFor(logging.INFO):
                record: dict[str, Any] = {
                    "ts": _timestamp(wall),
                    "request_id": request_id,
                    "method": method,
                    "route": route,
                    "path": scope["path"],
                    "status": status,
                    "latency_ms": round(seconds * 1000.0, 3),
                }
                if stages:
                    record["stages_ms"] = dict(stages)
                if tally.counts:
                    record["cache"] = tally.as_dict()
                if error_type is not None:
                    record["error"] = error_type
                line = json.dumps(record, separators=(",", ":"))
                # makeRecord + handle: what .info() does, without its walk up the stack for the
                # caller's file and line (the same for every access line anyway).
                self.log.handle(
                    self.log.makeRecord(self.log.name, logging.INFO, __file__, 0, line, (), None)
                )


def configure_access_log() -> logging.Logger:
    """Make ``ragserve.access`` emit INFO lines to stderr, unless logging is set up already.

    The line is the JSON record alone. When the program (or a test) has configured handlers on
    the root logger, records just propagate to them.
    """
    logger = logging.getLogger(ACCESS_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    return logger


def install_observability(
    app: FastAPI, service: Callable[[], RetrievalService | None], *, access_log: bool = True
) -> Metrics:
    """Add ``/metrics``, ``/v1/stats`` and the middleware (outermost) to ``app``."""
    from ragserve.api.stats import monitoring_router

    metrics = Metrics(service)
    app.state.metrics = metrics
    app.include_router(monitoring_router)
    logger = configure_access_log() if access_log else logging.getLogger(ACCESS_LOGGER)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, logger=logger)
    return metrics
