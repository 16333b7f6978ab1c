"""Optional bearer-key authentication for the /v1 routes.

The OpenAPI description declares the bearer scheme only when keys are configured (see
:func:`document_security`), so the published contract matches what the server enforces.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi

from ragserve.errors import Unauthorized


def check_key(authorization: str | None, keys: list[bytes]) -> None:
    """Raise :class:`Unauthorized` unless ``authorization`` carries one of ``keys`` (or there are
    no keys). Shared by the /v1 routes, /mcp and /ui."""
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    given = token.strip().encode()
    if not any(hmac.compare_digest(given, key) for key in keys):
        raise Unauthorized("invalid API key")


async def require_key(request: Request) -> None:
    """Async on purpose: it never blocks, and a sync dependency costs every /v1 request a trip
    through the thread pool, in front of admission control (ragserve.admission)."""
    check_key(request.headers.get("authorization"), request.app.state.api_keys)


def document_security(app: FastAPI) -> None:
    """Declare bearer authentication on every /v1 operation in the OpenAPI description."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            spec.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            for path, operations in spec["paths"].items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
