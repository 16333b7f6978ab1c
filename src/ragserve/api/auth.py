"""Bearer-key authentication and authorization for the /v1 routes.

Keys are the global ones of the settings and the scoped ones of :mod:`ragserve.keys`; each
route's operation id maps to a :class:`Rule` (the role it needs, on which collection).

The OpenAPI description declares the bearer scheme only when keys are configured (see
:func:`document_security`), so the published contract matches what the server enforces.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi

from ragserve.keys import GLOBAL, KeyStore, Principal, Role, authenticate

#: Where a rule finds the collection a request touches (None: every collection).
Locate = Callable[[Request], Awaitable[str | None]]


async def _path(request: Request) -> str | None:
    return str(request.path_params.get("name", ""))


async def _body(request: Request) -> str | None:
    """The ``name`` of a JSON body (create_collection); FastAPI has read the body already."""
    try:
        name = (await request.json()).get("name")
    except (ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) else ""


async def _job(request: Request) -> str | None:
    jobs = getattr(request.app.state, "jobs", None)
    job = jobs.find(str(request.path_params.get("job_id", ""))) if jobs is not None else None
    return job.collection if job is not None else ""


async def _every(request: Request) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Rule:
    """What a route needs: a role, on the collection ``where`` finds (or on every one).

    ``own=True``: any key passes the check here and the route itself keeps to the key's
    collections (a listing shows only those; the models serve every key)."""

    role: Role
    where: Locate = _every
    own: bool = False


#: The rule of every /v1 route, by operation id. A route missing here needs an admin key over
#: every collection (tests/api/test_authorization.py fails for it, so it gets a rule).
RULES: dict[str, Rule] = {
    "list_collections": Rule(Role.READ, own=True),
    "create_collection": Rule(Role.WRITE, _body),
    "update_collection": Rule(Role.WRITE, _path),
    "get_collection": Rule(Role.READ, _path),
    "delete_collection": Rule(Role.ADMIN, _path),
    "add_documents": Rule(Role.WRITE, _path),
    "get_document": Rule(Role.READ, _path),
    "delete_document": Rule(Role.WRITE, _path),
    "create_job": Rule(Role.WRITE, _path),
    "search": Rule(Role.READ, _path),
    "create_embeddings": Rule(Role.READ, own=True),
    "rerank": Rule(Role.READ, own=True),
    "tokenize": Rule(Role.READ, own=True),
    "list_jobs": Rule(Role.READ, own=True),
    "get_job": Rule(Role.READ, _job),
    "cancel_job": Rule(Role.WRITE, _job),
    "create_key": Rule(Role.ADMIN),
    "list_keys": Rule(Role.ADMIN),
    "revoke_key": Rule(Role.ADMIN),
    "metrics": Rule(Role.READ),
    "stats": Rule(Role.READ),
}
_UNLISTED = Rule(Role.ADMIN)


def check_key(
    authorization: str | None, keys: list[bytes], scoped: KeyStore | None = None
) -> Principal:
    """The principal behind ``authorization``: one of the global ``keys`` or a ``scoped`` key
    (:class:`Unauthorized` otherwise; anyone when no key exists). Shared by the /v1 routes,
    /mcp and /ui."""
    return authenticate(authorization or "", keys, scoped)


async def require_key(request: Request) -> None:
    """Authenticate the request's bearer key and check its scope against the route's rule.

    Async on purpose: it never blocks (the key table is a snapshot in memory), and a sync
    dependency costs every /v1 request a trip through the thread pool, in front of admission
    control (ragserve.admission)."""
    keys: KeyStore | None = getattr(request.app.state, "keys", None)
    principal = check_key(request.headers.get("authorization"), request.app.state.api_keys, keys)
    request.state.principal = principal
    if principal is GLOBAL:
        return
    route = request.scope.get("route")
    rule = RULES.get(getattr(route, "operation_id", None) or "", _UNLISTED)
    if rule.own:
        principal.require_role(rule.role)
    else:
        principal.require(rule.role, await rule.where(request))


def principal_of(request: Request) -> Principal:
    """The principal :func:`require_key` found for this request."""
    principal: Principal = getattr(request.state, "principal", GLOBAL)
    return principal


def document_security(app: FastAPI) -> None:
    """Declare bearer authentication on every /v1 operation in the OpenAPI description, while
    authentication is on (a global key is configured or a scoped key exists)."""
    specs: dict[bool, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        keys: KeyStore | None = getattr(app.state, "keys", None)
        on = bool(app.state.api_keys) or (keys is not None and keys.any_active())
        if on not in specs:
            spec = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            if on:
                spec.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"}
                }
                for path, operations in spec["paths"].items():
                    if path.startswith("/v1/"):
                        for operation in operations.values():
                            operation["security"] = [{"bearer": []}]
            specs[on] = spec
        return specs[on]

    app.openapi = openapi  # type: ignore[method-assign]
