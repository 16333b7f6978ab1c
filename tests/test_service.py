"""The library core: ingest paths, idempotence, batching of concurrent queries."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ragserve.ingest.sources import IngestFailure
from ragserve.search import SearchRequest
from ragserve.service import STAGES, IngestTimings, RetrievalService
from ragserve.types import Document
from tests.fakes import (
    FAKE_EMBEDDER,
    FakeEmbedder,
    Vectors,
    make_service,
    make_settings,
    wait_until,
)


class CountingEmbedder(FakeEmbedder):
    def __init__(self) -> None:
        super().__init__(64, "fake-embedder")
        self.documents_embedded = 0
        self.query_batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.inside = 0  # calls that entered the model (and maybe wait at the gate)

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        self.documents_embedded += len(texts)
        return super().embed_documents(texts)

    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> Vectors:
        self.inside += 1
        self.entered.set()
        assert self.gate.wait(30)
        self.query_batches.append(len(texts))
        return super().embed_queries(texts)


@pytest.fixture
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture
def service(tmp_path: Path, embedder: CountingEmbedder) -> Iterator[RetrievalService]:
    svc = make_service(make_settings(tmp_path, chunk_tokens=16, chunk_overlap=4), embedder)
    svc.create_collection("c")
    yield svc
    svc.close()


def _doc(i: int, extra: str = "") -> Document:
    body = " ".join(f"word{i}x{j}" for j in range(40))
    return Document(id=f"d{i}", text=f"Paragraph {i}. {body}{extra}", metadata={"i": i})


def test_unchanged_documents_are_not_embedded_again(
    service: RetrievalService, embedder: CountingEmbedder
) -> None:
    first = service.ingest("c", [_doc(i) for i in range(5)])
    assert [r.status for r in first] == ["created"] * 5
    assert all(r.chunks > 1 for r in first)  # 40+ words at 16 tokens a chunk
    embedded = embedder.documents_embedded
    assert embedded == sum(r.chunks for r in first)

    again = service.ingest("c", [_doc(i) for i in range(5)])
    assert [r.status for r in again] == ["unchanged"] * 5
    assert [r.chunks for r in again] == [r.chunks for r in first]
    assert embedder.documents_embedded == embedded

    changed = service.ingest("c", [_doc(2, " and a new ending")])
    assert changed[0].status == "updated"
    assert embedder.documents_embedded == embedded + changed[0].chunks


def test_failures_pass_through_in_order_and_the_rest_is_stored(service: RetrievalService) -> None:
    items = [
        _doc(1),
        IngestFailure(source="broken.pdf", error="encrypted PDF"),
        Document(id="empty", text="  \n "),
        _doc(2),
    ]
    results = service.ingest("c", items, batch_chunks=2)
    assert [(r.id, r.status) for r in results] == [
        ("d1", "created"),
        ("broken.pdf", "failed"),
        ("empty", "failed"),
        ("d2", "created"),
    ]
    assert results[1].error == "encrypted PDF"
    assert service.get_collection("c").documents == 2


def test_chunks_respect_the_configured_size(service: RetrievalService) -> None:
    service.ingest("c", [_doc(7)])
    stored = service.get_document("c", "d7")
    assert len(stored.chunks) > 2
    for chunk in stored.chunks:
        assert len(chunk.text.split()) <= 16


@pytest.mark.parametrize("runs", [1, 2])
def test_concurrent_queries_are_batched_together(
    tmp_path: Path, embedder: CountingEmbedder, runs: int
) -> None:
    settings = make_settings(tmp_path, threads=runs, embedder_threads=1)
    assert settings.embedder_runs == runs
    service = make_service(settings, embedder)
    embedder.gate.clear()  # hold the model: queries pile up behind the first ``runs`` ones
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda q=q: results.append(service.embed_queries([q])))
        for q in ("alpha", "beta", "gamma", "delta", "epsilon")
    ]
    try:
        for i, t in enumerate(threads[:runs], start=1):
            t.start()
            wait_until(lambda i=i: embedder.inside == i)  # each worker holds one query
        for t in threads[runs:]:
            t.start()
        wait_until(lambda: pending(service, "embed-fake-embedder") == 5)
        embedder.gate.set()
        for t in threads:
            t.join(10)
    finally:
        embedder.gate.set()
        service.close()
    assert len(results) == 5
    # The first ``runs`` queries alone, then what waited, shared between the workers: one batch
    # of four (one worker), or a batch of two and one of one (two workers).
    assert sorted(embedder.query_batches) == ([1, 4] if runs == 1 else [1, 1, 1, 2])


def pending(service: RetrievalService, batcher: str) -> int:
    """Items waiting in a model batcher, as the service reports them (0 before it starts)."""
    snapshot = service.models.snapshot()
    return next((b.pending for b in snapshot.batchers if b.name == batcher), 0)


def test_search_uses_the_collection_embedder(service: RetrievalService) -> None:
    service.ingest("c", [_doc(i) for i in range(3)])
    hits = service.search("c", SearchRequest(query="word1x5 word1x6", mode="dense")).hits
    assert hits[0].document_id == "d1"


def test_ingest_timings_account_for_every_stage(service: RetrievalService) -> None:
    timings = IngestTimings()
    results = list(service.ingest_iter("c", [_doc(i) for i in range(4)], timings=timings))
    assert timings.documents == 4
    assert timings.chunks == sum(r.chunks for r in results)
    assert all(getattr(timings, stage) > 0 for stage in STAGES)
    figures = timings.as_dict()
    assert sum(figures[f"{stage}_share"] for stage in STAGES) == pytest.approx(1.0, abs=0.01)


def test_blas_threads_are_capped_for_the_process() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    from ragserve.service import limit_blas_threads

    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas, "numpy without a BLAS pool?"
    with threadpool_limits(limits=None):  # restores the pools afterwards
        limit_blas_threads(1)
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {1}


def test_malloc_arenas_are_capped_on_glibc_unless_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import platform

    from ragserve.service import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the operator's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    expected = platform.libc_ver()[0] == "glibc"
    assert limit_malloc_arenas() is expected


class InstructedEmbedder(FakeEmbedder):
    """Records each call's choice (its spec marks the query prefix optional, like bge v1.5's)."""

    def __init__(self) -> None:
        super().__init__(64, "fake-embedder")
        self.calls: list[tuple[tuple[str, ...], bool]] = []

    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> Vectors:
        self.calls.append((tuple(texts), instruction))
        vectors = super().embed_queries(texts)
        return vectors if instruction else -vectors  # tell them apart


@pytest.mark.parametrize(
    ("optional", "hybrid_instruction", "expected"),
    [
        (True, False, {"dense": True, "hybrid": False}),
        (True, True, {"dense": True, "hybrid": True}),
        (False, False, {"dense": True, "hybrid": True}),  # a required prefix is always used
    ],
)
def test_hybrid_searches_leave_out_an_optional_query_instruction(
    tmp_path: Path, optional: bool, hybrid_instruction: bool, expected: dict[str, bool]
) -> None:
    embedder = InstructedEmbedder()
    settings = make_settings(tmp_path, hybrid_query_instruction=hybrid_instruction)
    svc = make_service(settings)
    svc.models.provide(replace(FAKE_EMBEDDER, query_prefix_optional=optional), embedder)
    try:
        svc.create_collection("c")
        svc.ingest("c", [_doc(1), _doc(2)])
        for mode, instruction in expected.items():
            embedder.calls.clear()
            svc.search("c", SearchRequest(query=f"word1x3 {mode}", mode=mode))
            assert embedder.calls == [((f"word1x3 {mode}",), instruction)]
        # The two forms are cached apart: the same text, embedded both ways, twice each.
        for _ in range(2):
            with_it = svc.embed_queries(["same"], instruction=True)
            without = svc.embed_queries(["same"], instruction=False)
        assert np.allclose(with_it, -without) == optional
        assert [c for c in embedder.calls if c[0] == ("same",)] == (
            [(("same",), True), (("same",), False)] if optional else [(("same",), True)]
        )
    finally:
        svc.close()


def test_ensure_collection_returns_or_creates(service: RetrievalService) -> None:
    from ragserve.errors import CollectionNotFound

    assert service.ensure_collection("c").name == "c"  # the existing one
    with pytest.raises(CollectionNotFound):
        service.ensure_collection("new", create=False)
    assert "new" not in [c.name for c in service.list_collections()]
    made = service.ensure_collection("new")
    assert made.name == "new" and made.documents == 0
    assert "new" in [c.name for c in service.list_collections()]
