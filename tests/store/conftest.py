"""Store backends under test. The contract suite runs once per entry of ``STORE_FACTORIES``.

A factory takes a fresh directory and returns an open store. The PostgreSQL backend will be
added here (a ``pgserver`` instance per session) when it exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ragserve.store.base import Store
from ragserve.store.sqlite import SqliteStore

StoreFactory = Callable[[Path], Store]

STORE_FACTORIES: dict[str, StoreFactory] = {
    # Small collections: exact numpy search.
    "sqlite-exact": lambda path: SqliteStore(path, exact_search_below=1_000_000),
    # Every collection on the HNSW index, including filtered-search fallbacks.
    "sqlite-ann": lambda path: SqliteStore(path, exact_search_below=0),
}


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = STORE_FACTORIES[request.param](tmp_path / "store")
    yield opened
    opened.close()
