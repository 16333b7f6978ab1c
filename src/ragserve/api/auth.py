"""Optional bearer-key authentication for the /v1 routes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ragserve.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="An API key from RAGSERVE_API_KEYS.")


def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    keys: list[bytes] = request.app.state.api_keys
    if not keys:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    given = credentials.credentials.encode()
    if not any(hmac.compare_digest(given, key) for key in keys):
        raise Unauthorized("invalid API key")
