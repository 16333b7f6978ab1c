"""Scoped API keys: which collections a key reaches, and whether it reads, writes or administers.

A key is ``rsk_<id>_<secret>``: ``id`` (12 hex digits) names the key in listings and logs and is
how a request's key is found; ``secret`` is 32 random bytes (``secrets.token_urlsafe``). Only the
SHA-256 of the whole key is stored. A slow password hash (bcrypt, argon2) protects *low-entropy*
secrets from guessing after a leak of the hashes; a 256-bit random key cannot be guessed either
way, so a fast hash loses nothing and keeps the check per request at a microsecond. The digest
is compared with :func:`hmac.compare_digest` (constant time). The key itself is shown once, when
it is created, and is never stored, logged or listed.

Roles are ordered: ``read`` (get, list, search, embeddings, rerank) < ``write`` (also add, sync
and delete documents, create the collection, ingest jobs) < ``admin`` (also delete the
collection; with every collection in scope, manage keys). ``collections=None`` is every
collection, present and future. The global keys of the settings (``RAGSERVE_API_KEYS``) are
admin keys over every collection.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from ragserve.control import ControlDB
from ragserve.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from ragserve.store.base import check_collection_name

PREFIX = "rsk_"
_KEY = re.compile(r"^rsk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
#: Seconds a server may use its snapshot of the keys table before reading it again (a key
#: revoked by another process stops working within this; one revoked through the server's
#: admin route stops at once).
REFRESH_SECONDS = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    role INTEGER NOT NULL,
    collections TEXT,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""


class Role(IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value.upper()]
        except KeyError:
            valid = ", ".join(r.name.lower() for r in cls)
            raise InvalidInput(f"unknown role {value!r}; valid: {valid}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request speaks for: a key's id (``global`` for a settings key), role and scope."""

    key_id: str
    role: Role
    collections: frozenset[str] | None = None  # None: every collection

    def reaches(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def require(self, role: Role, collection: str | None) -> None:
        """403 unless this key has ``role`` on ``collection`` (``None``: on every collection)."""
        if collection is None:
            if self.collections is not None:
                raise Forbidden("this key is limited to some collections; this needs all of them")
        elif not self.reaches(collection):
            raise Forbidden(f"this key does not cover collection {collection!r}")
        self.require_role(role)

    def require_role(self, role: Role) -> None:
        if self.role < role:
            raise Forbidden(f"this key can {self.role.label}; this needs {role.label}")


#: A settings key (RAGSERVE_API_KEYS), and the principal of a server without authentication.
GLOBAL = Principal("global", Role.ADMIN, None)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as listed: everything but the secret (which is never stored)."""

    id: str
    name: str
    role: Role
    collections: tuple[str, ...] | None
    created_at: float
    revoked_at: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.label,
            "collections": list(self.collections) if self.collections is not None else None,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """The scoped keys in the control database (:mod:`ragserve.control`). Thread-safe."""

    def __init__(self, data_dir: Path) -> None:
        self._db = ControlDB(data_dir, _SCHEMA)
        self._snapshot: dict[str, tuple[str, Principal]] = {}
        self._read_at = -float("inf")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def create(
        self, name: str, role: Role | str, collections: list[str] | None = None
    ) -> tuple[str, KeyInfo]:
        """A new key and its record; the key is returned here and nowhere else, ever."""
        role = Role.parse(role) if isinstance(role, str) else role
        if not name or len(name) > 200:
            raise InvalidInput("a key's name must be 1-200 characters")
        scope = None
        if collections is not None:
            if not collections:
                raise InvalidInput("collections must name at least one collection (or be null)")
            scope = tuple(sorted({check_collection_name(c) for c in collections}))
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        info = KeyInfo(key_id, name, role, scope, time.time())
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO api_keys (id, name, digest, role, collections, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, name, digest(key), int(role),
                 json.dumps(scope) if scope is not None else None, info.created_at),
            )  # fmt: skip
        self._read_at = -float("inf")
        return key, info

    def list(self, *, revoked: bool = False) -> list[KeyInfo]:
        sql = "SELECT id, name, role, collections, created_at, revoked_at FROM api_keys"
        if not revoked:
            sql += " WHERE revoked_at IS NULL"
        with self._db.reading() as conn:
            rows = conn.execute(sql + " ORDER BY created_at, id").fetchall()
        return [_info(row) for row in rows]

    def revoke(self, key_id: str) -> KeyInfo:
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT id, name, role, collections, created_at, revoked_at FROM api_keys "
                "WHERE id = ?",
                (key_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no key with id {key_id!r}")
            if row[5] is None:
                conn.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE id = ?", (time.time(), key_id)
                )
        self._read_at = -float("inf")
        return self.get(key_id)

    def get(self, key_id: str) -> KeyInfo:
        with self._db.reading() as conn:
            row = conn.execute(
                "SELECT id, name, role, collections, created_at, revoked_at FROM api_keys "
                "WHERE id = ?",
                (key_id,),
            ).fetchone()
        if row is None:
            raise NotFound(f"no key with id {key_id!r}")
        return _info(row)

    def _active(self) -> dict[str, tuple[str, Principal]]:
        """id -> (digest, principal) of every key not revoked, read at most once a second."""
        now = time.monotonic()
        if now - self._read_at < REFRESH_SECONDS:
            return self._snapshot
        with self._lock:
            if now - self._read_at >= REFRESH_SECONDS:
                with self._db.reading() as conn:
                    rows = conn.execute(
                        "SELECT id, digest, role, collections FROM api_keys "
                        "WHERE revoked_at IS NULL"
                    ).fetchall()
                self._snapshot = {
                    r[0]: (r[1], Principal(r[0], Role(r[2]), _scope(r[3]))) for r in rows
                }
                self._read_at = now
        return self._snapshot

    def any_active(self) -> bool:
        return bool(self._active())

    def verify(self, key: str) -> Principal | None:
        """The principal of ``key``, or None when it is not an active scoped key."""
        match = _KEY.match(key)
        if match is None:
            return None
        entry = self._active().get(match.group(1))
        if entry is None:
            return None
        stored, principal = entry
        return principal if hmac.compare_digest(digest(key), stored) else None


def authenticate(authorization: str, global_keys: list[bytes], keys: KeyStore | None) -> Principal:
    """The principal behind an ``Authorization`` header value (401 when there is none).

    Authentication is on when a global key is configured or a scoped key exists; otherwise
    every request speaks for :data:`GLOBAL`, as before keys existed."""
    if not global_keys and (keys is None or not keys.any_active()):
        return GLOBAL
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    given = token.strip()
    raw = given.encode()
    # Every global key is compared (constant time each), whatever the outcome.
    is_global = False
    for key in global_keys:
        is_global |= hmac.compare_digest(raw, key)
    if is_global:
        return GLOBAL
    principal = keys.verify(given) if keys is not None else None
    if principal is None:
        raise Unauthorized("invalid API key")
    return principal


def _scope(value: str | None) -> frozenset[str] | None:
    return None if value is None else frozenset(json.loads(value))


def _info(row: tuple[str, str, int, str | None, float, float | None]) -> KeyInfo:
    scope = _scope(row[3])
    return KeyInfo(
        row[0], row[1], Role(row[2]), tuple(sorted(scope)) if scope is not None else None,
        row[4], row[5],
    )  # fmt: skip
