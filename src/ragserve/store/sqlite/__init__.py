"""The embedded store: SQLite (WAL) as the source of truth, with derived faiss HNSW (:mod:`.ann`,
kept by :mod:`.index`) and tantivy (:mod:`.lexical`) indexes; filters compiled to SQL
(:mod:`.filters`), health and damage reports (:mod:`.health`), backup/restore/repair
(:mod:`.backup`). Registered as backend ``"sqlite"`` in :mod:`ragserve.store.base`."""

from ragserve.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
