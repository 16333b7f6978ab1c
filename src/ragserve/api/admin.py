"""Admin routes: scoped API keys (create, list, revoke). Thin over :mod:`ragserve.keys`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from ragserve.api import schemas as s
from ragserve.api.auth import require_key
from ragserve.api.routes import _ERRORS
from ragserve.errors import Unavailable
from ragserve.keys import KeyInfo, KeyStore

admin_router = APIRouter(
    prefix="/v1/keys",
    tags=["admin"],
    dependencies=[Depends(require_key)],
    responses={c: _ERRORS[c] for c in (400, 401, 403, 404, 422)},
)


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="What the key is for.")
    role: Literal["read", "write", "admin"] = "read"
    collections: list[Annotated[str, Field(pattern=s.NAME_PATTERN)]] | None = Field(
        default=None,
        min_length=1,
        description="Collections the key reaches; null: every collection.",
    )


class Key(BaseModel):
    id: str
    name: str
    role: Literal["read", "write", "admin"]
    collections: list[str] | None
    created_at: float
    revoked_at: float | None = None


class KeyCreated(Key):
    key: str = Field(description="The bearer key: shown here once, never stored or shown again.")


class KeyList(BaseModel):
    keys: list[Key]


def _keys(request: Request) -> KeyStore:
    keys: KeyStore | None = getattr(request.app.state, "keys", None)
    if keys is None:
        raise Unavailable("scoped keys are not available on this server")
    return keys


Keys = Annotated[KeyStore, Depends(_keys)]


def _key(info: KeyInfo) -> Key:
    return Key.model_validate(info.as_dict())


@admin_router.post("", operation_id="create_key", response_model=KeyCreated, status_code=201)
def create_key(body: KeyCreate, keys: Keys) -> KeyCreated:
    """Create a scoped key; the answer carries the key, the only time it is shown."""
    key, info = keys.create(body.name, body.role, body.collections)
    return KeyCreated(key=key, **info.as_dict())


@admin_router.get("", operation_id="list_keys", response_model=KeyList)
def list_keys(keys: Keys) -> KeyList:
    """Every scoped key, revoked ones too (never their secrets)."""
    return KeyList(keys=[_key(k) for k in keys.list(revoked=True)])


@admin_router.delete("/{key_id}", operation_id="revoke_key", response_model=Key)
def revoke_key(key_id: Annotated[str, Path(min_length=1, max_length=64)], keys: Keys) -> Key:
    """Revoke a key: it stops working at once on this server (within a second on others)."""
    return _key(keys.revoke(key_id))
