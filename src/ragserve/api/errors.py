"""One error shape for every response: ``{"error": {"type", "message"}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragserve.errors import Overloaded, RagserveError, Unauthorized

log = logging.getLogger("ragserve.api")

_STATUS_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "unavailable",
}


def error_response(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    # A message may quote user input: escape what UTF-8 cannot carry (lone surrogates), or
    # rendering the error would itself fail.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(
        {"error": {"type": error_type, "message": message}}, status_code=status, headers=headers
    )


def _challenge(request: Request) -> str:
    """The ``WWW-Authenticate`` value of a 401 (RFC 6750 section 3): a bearer challenge, with
    ``error="invalid_token"`` when credentials were sent but not accepted."""
    if request.headers.get("authorization"):
        return 'Bearer realm="ragserve", error="invalid_token"'
    return 'Bearer realm="ragserve"'


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette lists only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(request.url.path):
            methods |= route.methods or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RagserveError)
    async def _ragserve(request: Request, exc: RagserveError) -> JSONResponse:
        headers = None
        if isinstance(exc, Overloaded):
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        elif isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": _challenge(request)}
        if not exc.public:
            log.error("internal error: %s", exc, exc_info=exc)
            return error_response(500, "internal_error", "internal server error")
        return error_response(exc.status_code, exc.error_type, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # A body that is not JSON at all is malformed (400); JSON of the wrong shape, 422.
        broken = [e for e in exc.errors() if e.get("type") == "json_invalid"]
        if broken:
            ctx = broken[0].get("ctx") or {}
            detail = ctx.get("error") or broken[0].get("msg", "invalid JSON")
            return error_response(400, "bad_request", f"request body is not valid JSON: {detail}")
        return error_response(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_TYPES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else kind.replace("_", " ")
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers.setdefault("WWW-Authenticate", _challenge(request))
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(exc.status_code, kind, message, headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal server error")
