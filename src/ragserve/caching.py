"""Bounded, thread-safe LRU caches for model outputs (never for search results).

Two caches sit in front of the model batchers of the served models
(:mod:`ragserve.models.manager`), shared by every model of a kind:

* **query embeddings**, keyed by ``(embedder name, query text)``. The embedder adds its query
  prefix itself, so the text plus the model name fully determine the vector.
* **rerank scores**, keyed by ``(reranker name, query text, digest of the passage)``. A document
  that changes gets new chunk text, so new digests: its old entries can never be hit again and
  age out of the LRU. A deleted document's chunks are never returned by the store, so no search
  can present their passages to the reranker again either. The cached value is the output of a
  pure function of the key, so a hit is never stale.

Search results themselves are never cached: every search reads the store.

Each cache counts hits and misses (read through ``ModelManager.snapshot()``), and each
lookup is also added to the :class:`CacheTally` of the current context, if any, so the access
log can say which caches a request hit (see :func:`tally_cache_lookups`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import numpy as np
import numpy.typing as npt

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

QUERY_CACHE = "query_embeddings"
RERANK_CACHE = "rerank_scores"


class CacheTally:
    """Hits and misses per cache name seen by one unit of work (an HTTP request)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}

    def add(self, cache: str, hits: int, misses: int) -> None:
        pair = self.counts.get(cache)
        if pair is None:
            self.counts[cache] = [hits, misses]
        else:
            pair[0] += hits
            pair[1] += misses

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {name: {"hits": h, "misses": m} for name, (h, m) in self.counts.items()}


_tally: ContextVar[CacheTally | None] = ContextVar("ragserve_cache_tally", default=None)


@contextmanager
def tally_cache_lookups() -> Iterator[CacheTally]:
    """Count every cache lookup made in this context (and threads started from it with a copy
    of it, as FastAPI's thread pool does) into a fresh :class:`CacheTally`."""
    tally = CacheTally()
    token = _tally.set(tally)
    try:
        yield tally
    finally:
        _tally.reset(token)


@dataclass(frozen=True, slots=True)
class CacheStats:
    name: str
    capacity: int
    size: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


class LruCache(Generic[K, V]):
    """A bounded least-recently-used map. ``capacity`` 0 disables it (every lookup misses and
    is not counted). Thread-safe: one lock around each operation."""

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.name = name
        self.capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, keys: Sequence[K]) -> list[V | None]:
        """The cached value of each key, or None; found keys become most recently used."""
        out: list[V | None] = []
        if not self.enabled:
            return [None] * len(keys)
        hits = 0
        with self._lock:
            data = self._data
            for key in keys:
                value = data.get(key)
                if value is not None:
                    data.move_to_end(key)
                    hits += 1
                out.append(value)
            self._hits += hits
            self._misses += len(keys) - hits
        tally = _tally.get()
        if tally is not None:
            tally.add(self.name, hits, len(keys) - hits)
        return out

    def put_many(self, items: Sequence[tuple[K, V]]) -> None:
        if not self.enabled:
            return
        with self._lock:
            data = self._data
            for key, value in items:
                data[key] = value
                data.move_to_end(key)
            while len(data) > self.capacity:
                data.popitem(last=False)

    def get_or_compute(
        self, keys: Sequence[K], compute: Callable[[list[int]], Sequence[V]]
    ) -> list[V]:
        """Values for ``keys``: cached ones, and ``compute(indexes of the misses)`` for the rest
        (one call for all misses, so they still go to the model as one batch)."""
        found = self.get_many(keys)
        missing = [i for i, value in enumerate(found) if value is None]
        if missing:
            computed = compute(missing)
            if len(computed) != len(missing):
                raise ValueError("compute returned the wrong number of values")
            for i, value in zip(missing, computed, strict=True):
                found[i] = value
            self.put_many([(keys[i], v) for i, v in zip(missing, computed, strict=True)])
        return cast("list[V]", found)  # every None was filled above

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.name, self.capacity, len(self._data), self._hits, self._misses)


Vector = npt.NDArray[np.float32]


def passage_digest(text: str) -> bytes:
    """A 128-bit content hash of a passage (the rerank cache key holds this, not the text)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class ModelCaches:
    """The service's two model-output caches, with the keying rules in one place."""

    def __init__(self, query_size: int, rerank_size: int) -> None:
        self.queries: LruCache[tuple[str, str], Vector] = LruCache(QUERY_CACHE, query_size)
        self.rerank: LruCache[tuple[str, str, bytes], float] = LruCache(RERANK_CACHE, rerank_size)

    def all(self) -> tuple[LruCache[Any, Any], ...]:
        return (self.queries, self.rerank)

    def query_vectors(
        self, model: str, texts: Sequence[str], embed: Callable[[list[str]], Sequence[Vector]]
    ) -> list[Vector]:
        """One vector per text; ``embed`` is called once with the texts not in the cache."""
        if not self.queries.enabled:
            return list(embed(list(texts)))

        def compute(missing: list[int]) -> list[Vector]:
            # Copy: a row of a batch matrix would keep the whole matrix alive in the cache.
            rows = [np.array(r, dtype=np.float32) for r in embed([texts[i] for i in missing])]
            for row in rows:
                row.setflags(write=False)
            return rows

        return self.queries.get_or_compute([(model, t) for t in texts], compute)

    def rerank_scores(
        self,
        model: str,
        pairs: Sequence[tuple[str, str]],
        score: Callable[[list[tuple[str, str]]], Sequence[float]],
    ) -> list[float]:
        """One logit per (query, passage) pair; ``score`` is called once with the pairs not in
        the cache."""
        if not self.rerank.enabled:
            return [float(x) for x in score(list(pairs))]

        def compute(missing: list[int]) -> list[float]:
            return [float(x) for x in score([pairs[i] for i in missing])]

        keys = [(model, query, passage_digest(passage)) for query, passage in pairs]
        return self.rerank.get_or_compute(keys, compute)
