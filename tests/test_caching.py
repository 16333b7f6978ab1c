"""The model-output caches: the LRU itself, and its wiring in the service.

What must hold: a repeated query is answered from the cache (hit counter moves, the embedder is
not called) with identical results; a changed document's passages miss the rerank cache (new
content hash), a deleted document's entries are never reached again; search results themselves
always come from the store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from ragserve.caching import (
    QUERY_CACHE,
    RERANK_CACHE,
    LruCache,
    ModelCaches,
    passage_digest,
    tally_cache_lookups,
)
from ragserve.search import SearchRequest
from ragserve.service import RetrievalService
from ragserve.types import Document
from tests.fakes import FakeEmbedder, FakeReranker, make_service, make_settings

# ------------------------------------------------------------------------------ the LRU


def test_lru_evicts_the_least_recently_used_and_counts_hits_and_misses() -> None:
    cache: LruCache[str, int] = LruCache("t", 2)
    cache.put_many([("a", 1), ("b", 2)])
    assert cache.get_many(["a"]) == [1]  # a is now more recent than b
    cache.put_many([("c", 3)])
    assert cache.get_many(["a", "b", "c"]) == [1, None, 3]
    stats = cache.stats()
    assert (stats.size, stats.capacity, stats.hits, stats.misses) == (2, 2, 3, 1)
    assert stats.hit_rate == pytest.approx(0.75)


def test_capacity_zero_disables_the_cache() -> None:
    cache: LruCache[str, int] = LruCache("off", 0)
    cache.put_many([("a", 1)])
    assert cache.get_many(["a"]) == [None]
    assert len(cache) == 0
    calls: list[list[int]] = []
    assert cache.get_or_compute(["a", "b"], lambda idx: calls.append(idx) or [7, 8]) == [7, 8]
    assert calls == [[0, 1]]
    assert cache.stats().hit_rate is None


def test_get_or_compute_calls_compute_once_with_only_the_misses() -> None:
    cache: LruCache[str, str] = LruCache("t", 10)
    cache.put_many([("b", "B")])
    seen: list[list[int]] = []

    def compute(idx: list[int]) -> list[str]:
        seen.append(idx)
        return [k.upper() for k in (["a", "b", "c"][i] for i in idx)]

    assert cache.get_or_compute(["a", "b", "c"], compute) == ["A", "B", "C"]
    assert seen == [[0, 2]]
    assert cache.get_or_compute(["a", "b", "c"], compute) == ["A", "B", "C"]
    assert seen == [[0, 2]]  # all hits: no call


def test_lookups_are_tallied_for_the_current_context_only() -> None:
    cache: LruCache[str, int] = LruCache("t", 10)
    cache.put_many([("a", 1)])
    cache.get_many(["a"])  # no tally active: only the global counters move
    with tally_cache_lookups() as tally:
        cache.get_many(["a", "zz"])
        cache.get_many(["a"])
    assert tally.as_dict() == {"t": {"hits": 2, "misses": 1}}


def test_lru_is_consistent_under_concurrent_use() -> None:
    cache: LruCache[int, int] = LruCache("t", 50)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(2000):
                key = int(rng.integers(0, 100))
                value = cache.get_or_compute([key], lambda idx, key=key: [key * 2])[0]
                assert value == key * 2
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = cache.stats()
    assert stats.size <= 50
    assert stats.hits + stats.misses == 4 * 2000


def test_cached_query_vectors_are_read_only_copies() -> None:
    caches = ModelCaches(query_size=8, rerank_size=8)
    batch = np.arange(6, dtype=np.float32).reshape(2, 3)
    rows = caches.query_vectors("m", ["x", "y"], lambda texts: list(batch))
    assert all(r.base is None and not r.flags.writeable for r in rows)
    batch[:] = -1  # the model's buffer is reused: the cache must not see it
    again = caches.query_vectors("m", ["x", "y"], lambda texts: pytest.fail("cache missed"))
    assert [list(r) for r in again] == [[0, 1, 2], [3, 4, 5]]


def test_rerank_keys_hold_a_digest_of_the_passage_per_model_and_query() -> None:
    caches = ModelCaches(query_size=0, rerank_size=8)
    calls: list[list[tuple[str, str]]] = []

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        calls.append(pairs)
        return [float(len(p)) for _, p in pairs]

    assert caches.rerank_scores("r", [("q", "aa"), ("q", "bbb")], score) == [2.0, 3.0]
    assert caches.rerank_scores("r", [("q", "bbb"), ("q", "cccc")], score) == [3.0, 4.0]
    assert calls == [[("q", "aa"), ("q", "bbb")], [("q", "cccc")]]
    caches.rerank_scores("r", [("other query", "aa")], score)
    caches.rerank_scores("other-model", [("q", "aa")], score)
    assert len(calls) == 4
    assert len(passage_digest("x" * 10_000)) == 16


# ------------------------------------------------------------------------------ in the service

DOCS = [
    Document(id="cats", title="Cats", text="Cats purr and chase mice around the old barn."),
    Document(id="dogs", title="Dogs", text="Dogs bark at the mail carrier and chase cats."),
    Document(id="fish", title="Fish", text="Fish swim in the pond behind the barn."),
]


class CountingReranker(FakeReranker):
    """Records every passage it is asked to score."""

    def __init__(self) -> None:
        super().__init__()
        self.passages: list[str] = []

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.passages.extend(p for _, p in pairs)
        return super().score_pairs(pairs)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[RetrievalService, FakeEmbedder, CountingReranker]]:
    embedder, reranker = FakeEmbedder(64, "fake-embedder"), CountingReranker()
    service = make_service(make_settings(tmp_path), embedder, reranker)
    service.create_collection("docs")
    service.ingest("docs", DOCS)
    try:
        yield service, embedder, reranker
    finally:
        service.close()


def _stats(service: RetrievalService, name: str) -> tuple[int, int]:
    cache = {c.name: c for c in service.models.snapshot().caches}[name]
    return cache.hits, cache.misses


def test_a_repeated_query_is_served_from_the_cache_with_identical_results(
    parts: tuple[RetrievalService, FakeEmbedder, CountingReranker],
) -> None:
    service, embedder, _ = parts
    request = SearchRequest(query="who chases cats", top_k=3)
    first = service.search("docs", request)
    calls = embedder.query_calls
    hits = _stats(service, QUERY_CACHE)[0]
    second = service.search("docs", request)
    assert embedder.query_calls == calls  # the model was not asked again
    assert _stats(service, QUERY_CACHE)[0] == hits + 1
    assert [(h.chunk_id, h.score, h.text) for h in second.hits] == [
        (h.chunk_id, h.score, h.text) for h in first.hits
    ]
    # The same vector through the embeddings path, and a different text misses.
    vector = service.embed_queries(["who chases cats"], "fake-embedder")
    assert embedder.query_calls == calls
    np.testing.assert_array_equal(vector[0], embedder.embed_documents(["who chases cats"])[0])
    service.embed_queries(["a different query"], "fake-embedder")
    assert embedder.query_calls == calls + 1


def test_a_mutated_result_does_not_change_the_cached_vector(
    parts: tuple[RetrievalService, FakeEmbedder, CountingReranker],
) -> None:
    service, _, _ = parts
    first = service.embed_queries(["purr"])
    expected = first.copy()
    first[:] = 0
    np.testing.assert_array_equal(service.embed_queries(["purr"]), expected)


def test_an_updated_document_misses_the_rerank_cache_and_results_are_fresh(
    parts: tuple[RetrievalService, FakeEmbedder, CountingReranker],
) -> None:
    service, _, reranker = parts
    request = SearchRequest(query="barn", top_k=3, rerank=True)
    service.search("docs", request)
    assert reranker.passages, "the reranker scored the candidates"
    reranker.passages.clear()
    service.search("docs", request)
    assert reranker.passages == []  # every passage was cached

    new_text = "Cats now sleep all day in the sunny barn loft."
    service.ingest("docs", [Document(id="cats", title="Cats", text=new_text)])
    hits_before, misses_before = _stats(service, RERANK_CACHE)
    result = service.search("docs", request)
    # Only the changed document's passage went to the model: new content, new hash, a miss.
    assert len(reranker.passages) == 1
    assert "sunny barn loft" in reranker.passages[0]
    hits, misses = _stats(service, RERANK_CACHE)
    assert misses == misses_before + 1
    assert hits == hits_before + len(result.hits) - 1
    # The hit list is read from the store: the new text, never a cached result.
    cats = [h for h in result.hits if h.document_id == "cats"]
    assert cats and "sunny barn loft" in cats[0].text
    assert all("old barn" not in h.text for h in result.hits)


def test_a_deleted_documents_entries_are_never_reached(
    parts: tuple[RetrievalService, FakeEmbedder, CountingReranker],
) -> None:
    service, _, reranker = parts
    request = SearchRequest(query="barn", top_k=3, rerank=True)
    before = service.search("docs", request)
    assert "cats" in {h.document_id for h in before.hits}
    service.delete_document("docs", "cats")
    reranker.passages.clear()
    hits_before, misses_before = _stats(service, RERANK_CACHE)
    after = service.search("docs", request)
    assert "cats" not in {h.document_id for h in after.hits}
    hits, misses = _stats(service, RERANK_CACHE)
    # Every lookup was for a passage still in the store (all cached); none for the deleted one.
    assert (hits - hits_before, misses - misses_before) == (len(after.hits), 0)
    assert reranker.passages == []
    # Re-adding the id with other text reaches nothing of the old entries either.
    service.ingest("docs", [Document(id="cats", title="Cats", text="A barn owl hunts at dusk.")])
    result = service.search("docs", request)
    assert len(reranker.passages) == 1 and "owl" in reranker.passages[0]
    assert any("owl" in h.text for h in result.hits)


def test_sizes_of_zero_turn_the_caches_off(tmp_path: Path) -> None:
    embedder = FakeEmbedder(64, "fake-embedder")
    settings = make_settings(tmp_path, query_cache_size=0, rerank_cache_size=0)
    service = make_service(settings, embedder)
    try:
        service.create_collection("docs")
        service.ingest("docs", DOCS)
        for _ in range(2):
            service.search("docs", SearchRequest(query="barn", rerank=True))
        assert embedder.query_calls == 2
        assert all(c.hits == c.misses == 0 for c in service.models.snapshot().caches)
    finally:
        service.close()
