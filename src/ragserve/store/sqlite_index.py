"""Upkeep of the embedded store's dense indexes: load, verify, rebuild, grow and save them.

Every method runs under the store's write lock, on the writer connection, so the database state
an index is loaded from or saved against cannot change meanwhile. See :mod:`.sqlite_ann` for the
indexes themselves and the manifest.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ragserve.store import sqlite_ann as ann
from ragserve.store.base import Vectors


class IndexKeeper:
    """The dense indexes of one database, by collection id (caller holds the write lock)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        ann_dir: Path,
        exact_search_below: int,
        params: ann.AnnParams,
    ) -> None:
        self._conn = conn
        self.ann_dir = ann_dir
        self.exact_search_below = exact_search_below
        self.ann_params = params
        self.indexes: dict[int, ann.DenseIndex] = {}
        self._saved: dict[int, int] = {}

    def _ann_paths(self, cid: int) -> tuple[Path, Path]:
        return self.ann_dir / f"{cid}.hnsw", self.ann_dir / f"{cid}.json"

    def get(self, cid: int, dimension: int) -> ann.DenseIndex:
        """The collection's index, loaded (or rebuilt) on first use."""
        index = self.indexes.get(cid)
        if index is None:
            index = self._load_index(cid, dimension)
            self.indexes[cid] = index
        return index

    def drop(self, cid: int) -> None:
        """Forget a deleted collection's index and remove its files."""
        self.indexes.pop(cid, None)
        self._saved.pop(cid, None)
        for path in self._ann_paths(cid):
            path.unlink(missing_ok=True)

    def _state(self, cid: int) -> tuple[int, ann.Keys]:
        (generation,) = self._conn.execute(
            "SELECT generation FROM collections WHERE id = ?", (cid,)
        ).fetchone()
        keys = np.array(
            [
                r[0]
                for r in self._conn.execute(
                    "SELECT id FROM chunks WHERE collection_id = ? ORDER BY id", (cid,)
                )
            ],
            dtype=np.int64,
        )
        return int(generation), keys

    def _load_index(self, cid: int, dimension: int) -> ann.DenseIndex:
        generation, keys = self._state(cid)
        if len(keys) >= max(self.exact_search_below, 1):
            loaded = self._open_ann(cid, dimension, generation, keys)
            if loaded is not None:
                self._saved[cid] = generation
                return ann.DenseIndex(dimension, loaded)
        inner: ann.ExactIndex | ann.HnswIndex = ann.ExactIndex(dimension)
        if len(keys) >= max(self.exact_search_below, 1):
            inner = ann.HnswIndex(dimension, self.ann_params)
        for batch_keys, batch in self._stored_vectors(cid, dimension):
            inner.add(batch_keys, batch)
        index = ann.DenseIndex(dimension, inner)
        if index.is_ann:
            self._save_index(cid, index)
        return index

    def _stored_vectors(
        self, cid: int, dimension: int, batch: int = 20_000
    ) -> Iterator[tuple[ann.Keys, Vectors]]:
        last = -1
        while True:
            rows = self._conn.execute(
                "SELECT id, vector FROM chunks WHERE collection_id = ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (cid, last, batch),
            ).fetchall()
            if not rows:
                return
            keys = np.array([r[0] for r in rows], dtype=np.int64)
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
            yield keys, vectors.reshape(len(rows), dimension)
            last = int(keys[-1])

    def _open_ann(
        self, cid: int, dimension: int, generation: int, keys: ann.Keys
    ) -> ann.HnswIndex | None:
        """The saved index if its manifest matches the database and the file; else None."""
        index_path, manifest_path = self._ann_paths(cid)
        manifest = ann.Manifest.read(manifest_path)
        if (
            manifest is None
            or not index_path.is_file()
            or manifest.format_version != ann.MANIFEST_FORMAT
            or manifest.library != ann.HnswIndex.library
            or manifest.dimension != dimension
            or manifest.count != len(keys)
            or manifest.generation != generation
            or manifest.keys_checksum != ann.keys_checksum(keys)
            or manifest.file_sha256 != ann.file_sha256(index_path)
        ):
            return None
        try:
            loaded = ann.HnswIndex.load(index_path, dimension, self.ann_params, keys)
        except (RuntimeError, ValueError, OSError):
            return None
        return loaded if len(loaded) == len(keys) else None

    def _save_index(self, cid: int, index: ann.DenseIndex) -> None:
        """Persist an HNSW index with its manifest."""
        if not isinstance(index.inner, ann.HnswIndex):
            return
        generation, keys = self._state(cid)
        index_path, manifest_path = self._ann_paths(cid)
        manifest_path.unlink(missing_ok=True)  # never a manifest describing a half-written file
        with index.lock:
            digest = index.inner.save(index_path)
        ann.Manifest(
            format_version=ann.MANIFEST_FORMAT,
            library=ann.HnswIndex.library,
            library_version=ann.library_version(),
            dimension=index.dimension,
            metric="cos",
            count=len(keys),
            generation=generation,
            keys_checksum=ann.keys_checksum(keys),
            file_sha256=digest,
            connectivity=self.ann_params.connectivity,
            expansion_add=self.ann_params.expansion_add,
        ).write(manifest_path)
        self._saved[cid] = generation

    def apply(
        self,
        cid: int,
        dimension: int,
        index: ann.DenseIndex,
        removed: ann.Keys,
        added: ann.Keys,
        vectors: Vectors,
    ) -> None:
        """Mirror a committed write in the dense index."""
        try:
            index.apply(removed, added, vectors)
            if not index.is_ann and len(index) >= max(self.exact_search_below, 1):
                self.indexes[cid] = self._load_index(cid, dimension)  # grow into HNSW
        except BaseException:
            self.indexes.pop(cid, None)  # derived data: reload from SQLite on next use
            raise

    def flush(self) -> None:
        """Save every HNSW index changed since it was last saved."""
        for cid, index in list(self.indexes.items()):
            (generation,) = self._conn.execute(
                "SELECT generation FROM collections WHERE id = ?", (cid,)
            ).fetchone()
            if index.is_ann and self._saved.get(cid) != generation:
                self._save_index(cid, index)
