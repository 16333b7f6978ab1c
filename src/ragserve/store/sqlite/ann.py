"""In-memory dense indexes of the embedded store: exact (numpy) and HNSW (faiss).

Both are *derived data*: SQLite holds every vector, so an index can always be rebuilt from it.
A collection with fewer than ``exact_search_below`` chunks uses :class:`ExactIndex` (a matrix
scan is exact and, at that size, about as fast as a graph walk: in a serving process the model
evicts the matrix from the cache between queries, so the scan costs 0.71 ms at 5k 384-d vectors,
1.37 ms at 10k, against 0.44 / 0.49 ms for HNSW with a beam of 200). Larger ones use
:class:`HnswIndex` (faiss ``IndexHNSWFlat`` under an ``IndexIDMap2``), saved beside the
database with a JSON :class:`Manifest` that ties the file to the database state it reflects
(generation, chunk count, checksum of the keys), to the library that wrote it (name and
version) and to its own bytes (sha256, checked before the file is handed to faiss). A manifest
that does not match means a stale, corrupt or foreign index (such as one written by hnswlib,
the library of earlier versions): it is rebuilt from SQLite.

faiss cannot remove a vector from an HNSW graph, so a delete leaves a *tombstone*: the node
stays in the graph (walks still pass through it) and searches skip its key through an ID
selector. When tombstones pass ``AnnParams.max_tombstone_fraction`` of the nodes, the index is
compacted (rebuilt from its live vectors). Keys are the chunks' SQLite rowids (never reused:
``AUTOINCREMENT``). Vectors are L2-normalized on the way in, so inner products are cosine
similarities. The ANN library was chosen by measurement (100,000 x 384 vectors, side by side
with hnswlib and voyager; usearch crashes a process that imports onnxruntime after it): see
``docs/store.md`` and ``python -m bench.store_bench --compare-libraries``. Files are faiss's own
binary format and ``.npy``: nothing is pickled.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import mmap
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from ragserve.files import sha256_file, write_atomic
from ragserve.store.sqlite.meta import AllowedChunks, assign


class _Faiss:
    """faiss, imported on first use: ~13 MB resident that a process whose collections all use
    :class:`ExactIndex` never needs. The first attribute read imports it and puts the module
    in this one's place. (Its bundled OpenBLAS then misses ``RAGSERVE_BLAS_THREADS``, set at
    start-up: nothing here runs faiss's BLAS; every HNSW call sets its OpenMP threads.)"""

    def __getattr__(self, name: str) -> Any:
        global faiss
        import faiss as module

        faiss = module
        return getattr(module, name)


#: faiss, untyped: its stubs (1.15) lack classes used here (``SearchParametersHNSW``).
faiss: Any = _Faiss()

Vectors = npt.NDArray[np.float32]
Keys = npt.NDArray[np.int64]

MANIFEST_FORMAT = 1

#: Adds of at least this many vectors use every OpenMP thread (AnnParams.threads); smaller ones one.
BULK_ADD = 1_000
#: Vectors a compaction reads from the old index at a time (under the lock, ~ms each).
COMPACTION_BATCH = 20_000
#: Fewest vectors an int8 index learns its per-dimension ranges from; a first add of fewer (a
#: tiny collection on the HNSW path) uses [-1, 1] for every dimension (unit vectors).
SQ_TRAIN_MIN = 1_000
#: Filtered dense searches allowing at most this many chunks scan them exactly; larger allowed
#: sets walk the graph with a bitmap (docs/store.md: where the two cost the same).
FILTER_EXACT_MAX = 2_000
#: Graphs up to this many nodes search with ``AnnParams.expansion_search``; larger ones wider.
BEAM_GROWS_FROM = 100_000


@dataclass(frozen=True, slots=True)
class AnnParams:
    """HNSW parameters: graph degree (M), beam widths at build and at query time (ef), and the
    share of deleted nodes (tombstones) past which an index is compacted."""

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 96
    threads: int = 0  # 0: all cores, for bulk adds (see BULK_ADD)
    max_tombstone_fraction: float = 0.2
    #: Vectors in the graph: ``float32``, or ``int8`` (faiss's 8-bit scalar quantizer, per
    #: dimension min/max: a quarter of the memory; the store rescores the candidates with the
    #: full-precision vectors from SQLite).
    vectors: Literal["float32", "int8"] = "float32"
    #: The beam grows with the graph: ``expansion_search`` up to ``BEAM_GROWS_FROM`` nodes, then
    #: this much more per tenfold. Measured recall@10 (synthetic 384-d, docs/store.md): 1.0 at
    #: 100,000 nodes with 96; at 1,000,000 (int8) 0.87-0.94 with 96, 0.95 with 192, 0.97 with 256.
    expansion_per_decade: int = 160

    @property
    def quantized(self) -> bool:
        return self.vectors == "int8"

    def beam(self, nodes: int, count: int) -> int:
        """efSearch for ``count`` hits from a graph of ``nodes``: at least twice ``count`` (a
        beam of k loses hits: SciFact, 10k chunks, k=100: hybrid nDCG@10 0.005 lower than
        exact search, and the same with 2k)."""
        ef = self.expansion_search
        if nodes > BEAM_GROWS_FROM:
            ef += round(self.expansion_per_decade * math.log10(nodes / BEAM_GROWS_FROM))
        return max(ef, 2 * count)


M = TypeVar("M")


def _unit_range(dimension: int) -> Vectors:
    return np.stack([np.full(dimension, -1.0), np.full(dimension, 1.0)]).astype(np.float32)


def unhuge_zeros(rows: int, columns: int) -> Vectors:
    """A zeroed float32 matrix on an anonymous mapping of its own, with transparent huge pages
    refused where the platform has them. numpy asks for huge pages on large arrays; a growable
    matrix with spare capacity at the end of every row would then be resident whole (each 2 MB
    page touched somewhere): 25 MB instead of 15 MB for 9,854 384-d vectors in 16,384 columns.
    Pages never written stay unresident. The scan is 4-10 % slower without huge pages."""
    if rows * columns == 0:
        return np.zeros((rows, columns), dtype=np.float32)
    size = rows * columns * 4
    if hasattr(mmap, "MAP_PRIVATE"):  # POSIX: private, not the shared memory mmap defaults to
        mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    else:
        mapping = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        mapping.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(mapping, dtype=np.float32).reshape(rows, columns)


def normalize(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def top_k(keys: Keys, scores: npt.NDArray[np.float32], k: int) -> tuple[Keys, Vectors]:
    """The ``k`` best (key, score) pairs, best first; ties broken by key for determinism."""
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        keys, scores = keys[part], scores[part]
    order = np.lexsort((keys, -scores))
    return keys[order], scores[order]


class ExactIndex:
    """A growable matrix of unit vectors, one per column; removal moves the last column into
    the hole.

    Column-major because a scan is then BLAS's ``gemv`` in its streaming form (``y = q A``,
    ``A`` stored dimension by chunk): at 10,000 384-d vectors, one BLAS thread (the server's
    setting), caches evicted between scans, a search of 100 takes 1.06 ms against 1.25 ms for
    the row-major product (2-core EPYC VM; ``python -m bench.store_bench --exact-crossover``).
    """

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._columns = np.zeros((dimension, 0), dtype=np.float32)
        self._keys = np.zeros(0, dtype=np.int64)
        self._pos: dict[int, int] = {}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, keys: Keys, vectors: Vectors) -> None:
        if len(keys) == 0:
            return
        self.remove(keys)
        need = self._n + len(keys)
        if need > len(self._keys):
            cap = max(need, 2 * len(self._keys), 64)
            columns = unhuge_zeros(self.dimension, cap)
            columns[:, : self._n] = self._columns[:, : self._n]
            ids = np.zeros(cap, dtype=np.int64)
            ids[: self._n] = self._keys[: self._n]
            self._columns, self._keys = columns, ids
        self._columns[:, self._n : need] = normalize(vectors).T
        self._keys[self._n : need] = keys
        for offset, key in enumerate(keys.tolist()):
            self._pos[key] = self._n + offset
        self._n = need

    def remove(self, keys: Keys) -> None:
        for key in keys.tolist():
            pos = self._pos.pop(key, None)
            if pos is None:
                continue
            last = self._n - 1
            if pos != last:
                moved = int(self._keys[last])
                self._columns[:, pos] = self._columns[:, last]
                self._keys[pos] = moved
                self._pos[moved] = pos
            self._n = last

    def keys(self) -> Keys:
        return self._keys[: self._n].copy()

    def vectors(self, keys: Keys) -> tuple[Keys, Vectors]:
        """The vectors of those ``keys`` that are present (and the keys kept, in order)."""
        pos = [self._pos.get(k, -1) for k in keys.tolist()]
        present = np.array([p >= 0 for p in pos], dtype=bool)
        cols = np.array([p for p in pos if p >= 0], dtype=np.int64)
        return keys[present], np.ascontiguousarray(self._columns[:, cols].T)

    def search(self, query: Vectors, k: int) -> tuple[Keys, Vectors]:
        scores = query @ self._columns[:, : self._n]
        return top_k(self._keys[: self._n], scores, k)

    def search_allowed(
        self, query: Vectors, k: int, allowed: AllowedChunks
    ) -> tuple[Keys, Vectors]:
        """Exact search over the allowed keys: the whole matrix scanned, the scores of the
        allowed kept (gathering the allowed columns first costs more than the scan itself from
        a few percent allowed: 2.8 against 0.6 ms at 10 % of 10,000, 10.5 ms at half)."""
        keys = self._keys[: self._n]
        keep = allowed.contains(keys)
        scores = (query @ self._columns[:, : self._n])[keep]
        return top_k(keys[keep], scores, k)


class HnswIndex:
    """faiss HNSW over inner product of unit vectors (score = cosine), keyed by rowid.

    ``IndexIDMap2`` maps rowids to graph nodes (and back, to read vectors). Deleted keys are
    tombstones: still in the graph, skipped by searches; :meth:`compacted` drops them. Live
    and dead keys are tracked here (the saved live-key set and the file's key map give them
    back at load). Not safe for concurrent calls: :class:`DenseIndex` serializes them.
    """

    library = "faiss"

    def __init__(
        self,
        dimension: int,
        params: AnnParams,
        index: Any = None,
        live: set[int] | None = None,
        dead: set[int] | None = None,
    ) -> None:
        self.dimension = dimension
        self.params = params
        if index is None:
            ip = faiss.METRIC_INNER_PRODUCT
            if params.quantized:
                qt = faiss.ScalarQuantizer.QT_8bit
                graph = faiss.IndexHNSWSQ(dimension, qt, params.connectivity, ip)
            else:
                graph = faiss.IndexHNSWFlat(dimension, params.connectivity, ip)
            graph.hnsw.efConstruction = params.expansion_add
            index = faiss.IndexIDMap2(graph)
        self._index = index
        self._live: set[int] = live if live is not None else set()
        self._dead: set[int] = dead if dead is not None else set()
        self._skip_dead: Any = None  # ID selector excluding the dead keys, built on demand
        #: Key (rowid) -> node of the graph, -1 for none or dead: reads vectors without faiss's
        #: per-key hash lookups (a filtered search's exact scan reads thousands).
        self._node = np.full(0, -1, dtype=np.int64)
        if self._live:
            stored = faiss.vector_to_array(index.id_map).astype(np.int64)
            live_mask = np.isin(stored, np.fromiter(self._live, np.int64, len(self._live)))
            self._set_nodes(stored[live_mask], np.flatnonzero(live_mask))

    def __len__(self) -> int:
        return len(self._live)

    @property
    def tombstones(self) -> int:
        return len(self._dead)

    @property
    def nodes(self) -> int:
        """Vectors in the graph, live and dead."""
        return int(self._index.ntotal)

    def needs_compaction(self) -> bool:
        dead = len(self._dead)
        return dead > 0 and dead >= self.params.max_tombstone_fraction * self.nodes

    def add(self, keys: Keys, vectors: Vectors) -> None:
        if len(keys) == 0:
            return
        known = [k for k in keys.tolist() if k in self._live or k in self._dead]
        if known:  # a key already in the graph (never the store's case: rowids are not reused)
            self.remove(keys)
            self._replace_with(self.compacted())
        # OpenMP threads pay off for bulk adds (rebuilds: 20,000 a batch) only: for a document's
        # few chunks their start-up and barriers cost more than the insert (20 vectors into 20k:
        # 17 ms on one thread, 50 ms on two, busy machine). The setting is per calling thread.
        bulk = len(keys) >= BULK_ADD
        faiss.omp_set_num_threads((self.params.threads or os.cpu_count() or 1) if bulk else 1)
        first = int(self._index.ntotal)
        unit = normalize(vectors)
        if not self._index.is_trained:  # int8: per-dimension ranges from the first vectors
            self._index.train(unit if len(unit) >= SQ_TRAIN_MIN else _unit_range(self.dimension))
        self._index.add_with_ids(unit, np.ascontiguousarray(keys, dtype=np.int64))
        self._live.update(keys.tolist())
        self._set_nodes(keys, np.arange(first, first + len(keys), dtype=np.int64))

    def _set_nodes(self, keys: Keys, nodes: Keys) -> None:
        self._node = assign(self._node, keys, nodes)

    def nodes_of(self, keys: Keys) -> Keys:
        """Graph nodes of ``keys`` (-1: not in the index, or deleted)."""
        out = np.full(len(keys), -1, dtype=np.int64)
        inside = (keys >= 0) & (keys < len(self._node))
        out[inside] = self._node[keys[inside]]
        return out

    def remove(self, keys: Keys) -> None:
        for key in keys.tolist():
            if key in self._live:
                self._live.discard(key)
                self._dead.add(key)
                self._skip_dead = None
                self._node[key] = -1

    def live_keys(self) -> Keys:
        """The keys of the live vectors, sorted."""
        live = np.fromiter(self._live, dtype=np.int64, count=len(self._live))
        live.sort()
        return live

    def compacted(self) -> HnswIndex:
        """A new index of the live vectors only (no tombstones); this one is left as it is."""
        fresh = HnswIndex(self.dimension, self.params)
        live = self.live_keys()
        for lo in range(0, len(live), 20_000):
            fresh.add(*self.vectors(live[lo : lo + 20_000]))
        return fresh

    def _replace_with(self, other: HnswIndex) -> None:
        self._index, self._live, self._dead = other._index, other._live, other._dead
        self._node = other._node
        self._skip_dead = None

    def vectors(self, keys: Keys) -> tuple[Keys, Vectors]:
        nodes = self.nodes_of(np.asarray(keys, dtype=np.int64))
        present = nodes >= 0
        kept = np.ascontiguousarray(keys[present], dtype=np.int64)
        if len(kept) == 0:
            return kept, np.zeros((0, self.dimension), dtype=np.float32)
        storage = faiss.downcast_index(faiss.downcast_index(self._index.index).storage)
        if isinstance(storage, faiss.IndexFlat):  # the vectors in place: gather rows
            total = int(storage.ntotal)
            flat = faiss.rev_swig_ptr(storage.get_xb(), total * self.dimension)
            matrix = np.asarray(flat).reshape(total, self.dimension)
            return kept, np.ascontiguousarray(matrix[nodes[present]], dtype=np.float32)
        faiss.omp_set_num_threads(1)
        got = self._index.reconstruct_batch(kept)
        return kept, np.ascontiguousarray(got, dtype=np.float32)

    def scores_of(self, keys: Keys, query: Vectors) -> tuple[Keys, Vectors]:
        """Inner products of ``query`` (unit) with the vectors of those ``keys`` in the index
        (and the keys kept), read in place: float32 rows, or int8 codes decoded as one
        matrix product (faiss's 8-bit decoding: ``min + (code + 0.5) / 255 * range``)."""
        nodes = self.nodes_of(np.asarray(keys, dtype=np.int64))
        present = nodes >= 0
        kept, nodes = np.ascontiguousarray(keys[present], dtype=np.int64), nodes[present]
        storage = faiss.downcast_index(faiss.downcast_index(self._index.index).storage)
        total, d = int(storage.ntotal), self.dimension
        if isinstance(storage, faiss.IndexFlat):
            matrix = np.asarray(faiss.rev_swig_ptr(storage.get_xb(), total * d))
            return kept, matrix.reshape(total, d)[nodes] @ query
        if isinstance(storage, faiss.IndexScalarQuantizer) and storage.code_size == d:
            codes = np.asarray(faiss.rev_swig_ptr(storage.codes.data(), total * d))
            trained = faiss.vector_to_array(storage.sq.trained).astype(np.float32)
            low, span = trained[:d], trained[d:]
            weights = query * span / np.float32(255.0)
            rows = codes.reshape(total, d)[nodes].astype(np.float32)
            scores = (rows + np.float32(0.5)) @ weights + np.float32(query @ low)
            return kept, scores.astype(np.float32)
        kept, vectors = self.vectors(kept)
        return kept, vectors @ query

    def search(
        self, query: Vectors, k: int, allowed: AllowedChunks | None = None
    ) -> tuple[Keys, Vectors]:
        """The ``k`` best live keys (of ``allowed`` only, if given: a filter as a bitmap over
        keys that the graph walk checks; nodes outside it still route the walk)."""
        count = min(k, len(self._live) if allowed is None else allowed.count)
        if count <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        # One query: no OpenMP team. The setting is per thread and defaults to every core; a
        # team of two spinning at its barriers on a busy 2-core machine took 28 ms for what one
        # thread does in 0.1 ms (12,000 vectors, load 16).
        faiss.omp_set_num_threads(1)
        params = faiss.SearchParametersHNSW()
        params.efSearch = self.params.beam(self._index.ntotal, count)
        selectors = []
        if self._dead:
            if self._skip_dead is None:
                dead = np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))
                self._skip_dead = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
            selectors.append(self._skip_dead)
        if allowed is not None:
            bits = np.packbits(allowed.mask, bitorder="little")
            selectors.append(faiss.IDSelectorBitmap(len(allowed.mask), faiss.swig_ptr(bits)))
        if len(selectors) == 2:
            params.sel = faiss.IDSelectorAnd(*selectors)
        elif selectors:
            params.sel = selectors[0]
        scores, labels = self._index.search(query[None, :], count, params=params)
        keys = np.asarray(labels[0], dtype=np.int64)
        if int((keys >= 0).sum()) < count:  # too few nodes reached (deletes, a filter): exact
            if allowed is not None:
                everything = allowed.keys()
            else:
                everything = np.fromiter(self._live, dtype=np.int64, count=len(self._live))
            return top_k(*self.scores_of(everything, query), count)
        return keys, np.asarray(scores[0], dtype=np.float32)

    def save(self, path: Path) -> str:
        """Write atomically; returns the sha256 of the file."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        faiss.write_index(self._index, str(tmp))
        digest = sha256_file(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
        return digest

    @classmethod
    def load(cls, path: Path, dimension: int, params: AnnParams, live: Keys) -> HnswIndex:
        """Open a saved index whose live keys are ``live`` (checked by the manifest); the keys
        of its graph that are not live are its tombstones. The caller has verified the file's
        sha256 first: faiss only ever reads a file this store wrote."""
        index = faiss.read_index(str(path))
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"not an IndexIDMap2: {type(index).__name__}")
        graph = faiss.downcast_index(index.index)
        kind = faiss.IndexHNSWSQ if params.quantized else faiss.IndexHNSWFlat
        if not isinstance(graph, kind):
            raise ValueError(f"not an {kind.__name__}: {type(graph).__name__}")
        if index.d != dimension or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"index dimension {index.d} != {dimension} or not inner product")
        stored = faiss.vector_to_array(index.id_map).astype(np.int64)
        if len(stored) != index.ntotal:
            raise ValueError(f"the index holds {len(stored)} keys for {index.ntotal} nodes")
        if np.array_equal(stored, live):  # the usual case (no deletes since the build): O(n)
            dead = stored[:0]
        elif np.isin(live, stored, assume_unique=True).all():
            dead = np.setdiff1d(stored, live, assume_unique=True)
        else:
            raise ValueError("the index does not hold every live key")
        return cls(dimension, params, index, set(live.tolist()), set(dead.tolist()))


class DenseIndex:
    """The dense index of one collection, exact or HNSW, behind one lock.

    An HNSW index whose tombstones pass the fraction is compacted on a background thread:
    writes and searches go on against the old index meanwhile (the rebuild reads it a batch at
    a time under the lock), the writes made during the rebuild are replayed onto the new one,
    and it is swapped in. A write never waits for a rebuild (~100 s at 100,000 chunks).
    """

    def __init__(self, dimension: int, inner: ExactIndex | HnswIndex) -> None:
        self.dimension = dimension
        self.inner = inner
        self.lock = threading.Lock()
        #: Writes made while a compaction runs, in order (None: no compaction running).
        self._pending: list[tuple[Keys, Keys, Vectors]] | None = None
        self._compaction: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def is_ann(self) -> bool:
        return isinstance(self.inner, HnswIndex)

    @property
    def quantized(self) -> bool:
        """Whether scores are approximate (int8 vectors): the caller rescores candidates."""
        return isinstance(self.inner, HnswIndex) and self.inner.params.quantized

    def apply(self, removed: Keys, added: Keys, vectors: Vectors) -> None:
        """Mirror a write; start a compaction when the HNSW index's tombstones pass the
        fraction (the caller serializes writes: the store's write lock)."""
        with self.lock:
            self.inner.remove(removed)
            self.inner.add(added, vectors)
            if self._pending is not None:  # the running compaction replays it
                self._pending.append((removed.copy(), added.copy(), vectors.copy()))
            elif isinstance(self.inner, HnswIndex) and self.inner.needs_compaction():
                self._pending = []
                self._compaction = threading.Thread(
                    target=self._compact, args=(self.inner,), name="ann-compaction", daemon=True
                )
                self._compaction.start()

    def _compact(self, old: HnswIndex) -> None:
        try:
            with self.lock:
                live = old.live_keys()
            fresh = HnswIndex(self.dimension, old.params)
            for lo in range(0, len(live), COMPACTION_BATCH):
                with self.lock:  # writes may change the old index between batches
                    keys, vectors = old.vectors(live[lo : lo + COMPACTION_BATCH])
                fresh.add(keys, vectors)
            with self.lock:
                for removed, added, vectors in self._pending or []:
                    fresh.remove(removed)
                    fresh.add(added, vectors)
                if self.inner is old:
                    self.inner = fresh
        finally:
            with self.lock:
                self._pending = None

    def wait_for_compaction(self, timeout: float | None = None) -> None:
        """Block until a running compaction has swapped its index in (tests, close)."""
        thread = self._compaction
        if thread is not None:
            thread.join(timeout)

    def search(self, query: Vectors, k: int) -> tuple[Keys, Vectors]:
        with self.lock:
            return self.inner.search(normalize(query[None, :])[0], k)

    def search_filtered(
        self, query: Vectors, k: int, allowed: AllowedChunks
    ) -> tuple[Keys, Vectors]:
        """Filtered search that returns ``min(k, allowed.count)`` hits.

        An exact index, or a small allowed set (at most ``FILTER_EXACT_MAX`` keys), is scanned
        exactly: the allowed vectors gathered by key. Larger ones walk the HNSW graph with the
        allowed set as a bitmap the walk checks (falling back to the exact scan if the walk
        reaches fewer than ``k`` allowed nodes).
        """
        unit = normalize(query[None, :])[0]
        with self.lock:
            inner = self.inner
            if isinstance(inner, ExactIndex):
                return inner.search_allowed(unit, k, allowed)
            if allowed.count > FILTER_EXACT_MAX:
                return inner.search(unit, k, allowed)
            keys, scores = inner.scores_of(allowed.keys(), unit)
        return top_k(keys, scores, k)


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an index file reflects. A mismatch with the database means: rebuild."""

    format_version: int
    library: str
    library_version: str
    dimension: int
    metric: str
    count: int
    generation: int
    keys_checksum: str
    keys_sha256: str
    file_sha256: str
    connectivity: int
    expansion_add: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        return read_manifest(cls, path)

    def write(self, path: Path) -> None:
        write_atomic(path, self.to_json())


def read_manifest(cls: Callable[..., M], path: Path) -> M | None:
    """A manifest dataclass from its JSON file; None if missing, unreadable or of another shape."""
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
        return cls(**raw) if isinstance(raw, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def keys_checksum(keys: Keys) -> str:
    """Order-independent digest of a key set (sorted int64 bytes)."""
    return hashlib.sha256(np.sort(keys.astype(np.int64)).tobytes()).hexdigest()[:32]


def save_keys(keys: Keys, path: Path) -> str:
    """Write the live key set atomically as ``.npy`` (no pickle); returns its sha256."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(keys, dtype=np.int64), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    return sha256_file(path)


def library_version() -> str:
    try:
        return importlib.metadata.version("faiss-cpu")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
