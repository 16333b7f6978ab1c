"""Upkeep of the embedded store's dense indexes: load, verify, rebuild, grow and save them.

Every method runs under the store's write lock, on the writer connection, so the database state
an index is loaded from or saved against cannot change meanwhile. At open, a saved index whose
files are intact but older than the database (the process died before saving) is caught up by
replaying the difference between its saved key set and the chunks in SQLite; anything else
that does not match is rebuilt from SQLite. See :mod:`.ann` for the
indexes themselves and the manifest.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ragserve.files import sha256_file
from ragserve.store.base import Vectors
from ragserve.store.sqlite import ann

log = logging.getLogger(__name__)


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
        #: How each index was obtained: exact, loaded, caught up (+added -removed) or rebuilt.
        self.last_load: dict[int, str] = {}
        self._saved: dict[int, int] = {}

    def _ann_paths(self, cid: int) -> tuple[Path, Path, Path]:
        """Index file, manifest, and the live keys the index holds (``.npy``, no pickle)."""
        d = self.ann_dir
        return d / f"{cid}.hnsw", d / f"{cid}.json", d / f"{cid}.keys.npy"

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
        use_ann = len(keys) >= max(self.exact_search_below, 1)
        if use_ann:
            opened = self._open_ann(cid, dimension)
            if opened is not None:
                loaded, saved_keys, saved_generation = opened
                index = ann.DenseIndex(dimension, loaded)
                if saved_generation == generation and np.array_equal(saved_keys, keys):
                    self.last_load[cid] = "loaded"
                    self._saved[cid] = generation
                    return index
                # Writes since the save (e.g. a crash before close): replay the difference.
                removed = np.setdiff1d(saved_keys, keys, assume_unique=True)
                added = np.setdiff1d(keys, saved_keys, assume_unique=True)
                loaded.remove(removed)
                for batch_keys, batch in self._stored_vectors(cid, dimension, added):
                    loaded.add(batch_keys, batch)
                if len(loaded) == len(keys):
                    self.last_load[cid] = f"caught up (+{len(added)} -{len(removed)})"
                    self._save_index(cid, index)
                    return index
        inner: ann.ExactIndex | ann.HnswIndex = (
            ann.HnswIndex(dimension, self.ann_params) if use_ann else ann.ExactIndex(dimension)
        )
        for batch_keys, batch in self._stored_vectors(cid, dimension):
            inner.add(batch_keys, batch)
        index = ann.DenseIndex(dimension, inner)
        self.last_load[cid] = "rebuilt" if use_ann else "exact"
        if use_ann:
            self._save_index(cid, index)
        return index

    def _stored_vectors(
        self, cid: int, dimension: int, only: ann.Keys | None = None, batch: int = 20_000
    ) -> Iterator[tuple[ann.Keys, Vectors]]:
        """Vectors from SQLite in rowid order: all of the collection's, or those of ``only``."""
        if only is not None:
            for lo in range(0, len(only), batch):
                ids = json.dumps(only[lo : lo + batch].tolist())
                rows = self._conn.execute(
                    "SELECT id, vector FROM chunks WHERE id IN (SELECT value FROM json_each(?)) "
                    "ORDER BY id",
                    (ids,),
                ).fetchall()
                if rows:
                    yield _unpack(rows, dimension)
            return
        last = -1
        while True:
            rows = self._conn.execute(
                "SELECT id, vector FROM chunks WHERE collection_id = ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (cid, last, batch),
            ).fetchall()
            if not rows:
                return
            keys, vectors = _unpack(rows, dimension)
            yield keys, vectors
            last = int(keys[-1])

    def _open_ann(self, cid: int, dimension: int) -> tuple[ann.HnswIndex, ann.Keys, int] | None:
        """The saved index, its live keys and the generation it reflects, if the files are
        intact and consistent with each other (sha256 of both, manifest fields); else None."""
        index_path, manifest_path, keys_path = self._ann_paths(cid)
        manifest = ann.Manifest.read(manifest_path)
        if (
            manifest is None
            or not index_path.is_file()
            or not keys_path.is_file()
            or manifest.format_version != ann.MANIFEST_FORMAT
            or manifest.library != ann.HnswIndex.library
            or manifest.dimension != dimension
            or manifest.file_sha256 != sha256_file(index_path)
            or manifest.keys_sha256 != sha256_file(keys_path)
        ):
            return None
        try:
            saved_keys = np.load(keys_path, allow_pickle=False)
            if (
                saved_keys.dtype != np.int64
                or len(saved_keys) != manifest.count
                or ann.keys_checksum(saved_keys) != manifest.keys_checksum
            ):
                return None
            loaded = ann.HnswIndex.load(index_path, dimension, self.ann_params, saved_keys)
        except (RuntimeError, ValueError, OSError):
            return None
        return loaded, saved_keys, manifest.generation

    def _save_index(self, cid: int, index: ann.DenseIndex) -> None:
        """Persist an HNSW index, its live keys and the manifest tying them to the database.

        A save that fails (a full disk) leaves no manifest: the index in memory stays right,
        and the next open rebuilds from SQLite.
        """
        if not isinstance(index.inner, ann.HnswIndex):
            return
        generation, keys = self._state(cid)
        manifest_path = self._ann_paths(cid)[1]
        manifest_path.unlink(missing_ok=True)  # never a manifest describing a half-written file
        try:
            self._write_index(cid, index, generation, keys)
        except (OSError, RuntimeError) as exc:
            manifest_path.unlink(missing_ok=True)
            log.error("dense index of collection %d not saved (%s): rebuilt at next open", cid, exc)

    def _write_index(
        self, cid: int, index: ann.DenseIndex, generation: int, keys: ann.Keys
    ) -> None:
        assert isinstance(index.inner, ann.HnswIndex)
        index_path, manifest_path, keys_path = self._ann_paths(cid)
        with index.lock:
            digest = index.inner.save(index_path)
        keys_digest = ann.save_keys(keys, keys_path)
        ann.Manifest(
            format_version=ann.MANIFEST_FORMAT,
            library=ann.HnswIndex.library,
            library_version=ann.library_version(),
            dimension=index.dimension,
            metric="cos",
            count=len(keys),
            generation=generation,
            keys_checksum=ann.keys_checksum(keys),
            keys_sha256=keys_digest,
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


def _unpack(rows: list[tuple[int, bytes]], dimension: int) -> tuple[ann.Keys, Vectors]:
    keys = np.array([r[0] for r in rows], dtype=np.int64)
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
    return keys, vectors.reshape(len(rows), dimension)
