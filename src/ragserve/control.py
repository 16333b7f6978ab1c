"""The control database: what the server keeps about its own operation, beside the store.

``<data_dir>/control.db`` (SQLite, WAL) holds the scoped API keys (:mod:`ragserve.keys`) and the
ingest jobs (:mod:`ragserve.jobs`). It is a separate file from the embedded store's database so
that the CLI can manage keys while a server holds the store (the store's ``ragserve.lock`` keeps
other processes out of the store, not out of this file), and so that it exists whatever the
store backend is (PostgreSQL deployments keep their keys and jobs here too, per API server).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ragserve.errors import Unavailable

FILE_NAME = "control.db"


class ControlDB:
    """One connection, serialized by a lock: every statement here is a few microseconds."""

    def __init__(self, data_dir: Path, schema: str) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._schema = schema
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, check_same_thread=False, isolation_level=None, timeout=10
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(self._schema)
            except (OSError, sqlite3.Error) as exc:
                raise Unavailable(f"cannot open the control database {self.path}: {exc}") from None
            self._conn = conn
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error)."""
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._connect()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
