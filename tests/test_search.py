"""Search modes, fusion, reranking and collapsing, with fake models over the real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragserve.errors import ClientGone, CollectionNotFound, InvalidInput
from ragserve.fusion import FusionSpec
from ragserve.search import (
    STAGES,
    Searcher,
    SearchRequest,
    collapse_documents,
    rerank_fuse,
    rrf,
)
from ragserve.store.base import ChunkRef
from ragserve.store.sqlite import SqliteStore
from ragserve.types import Chunk, Document
from tests.fakes import FakeEmbedder, FakeReranker

DOCS = {
    "cats": ["Cats are small domesticated carnivorous mammals.", "A cat purrs and hunts mice."],
    "dogs": ["Dogs are loyal domesticated animals descended from wolves."],
    "python": ["Python is a programming language with dynamic typing."],
    "rust": ["Rust is a systems programming language focused on memory safety."],
    "sqlite": ["SQLite is an embedded database engine; FTS5 provides full-text search."],
    "tea": ["Green tea is brewed from the leaves of Camellia sinensis."],
}


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder(dimension=64)


@pytest.fixture
def store(tmp_path: Path, embedder: FakeEmbedder) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "data")
    s.create_collection("kb", embedder.name, embedder.dimension)
    for i, (doc_id, texts) in enumerate(DOCS.items()):
        chunks = [Chunk(doc_id, j, t) for j, t in enumerate(texts)]
        s.upsert_document(
            "kb",
            Document(doc_id, " ".join(texts), metadata={"n": i, "animal": i < 2}),
            f"h{i}",
            chunks,
            embedder.embed_documents(texts),
        )
    yield s
    s.close()


def chunk(doc: str, score: float = 0.0, index: int = 0) -> ChunkRef:
    return ChunkRef(f"key of {doc}#{index}", doc, index, score)


# --------------------------------------------------------------------------- pure functions


def test_rrf_sums_weighted_reciprocal_ranks() -> None:
    dense = [chunk("a", 0.9), chunk("b", 0.8), chunk("c", 0.7)]
    lexical = [chunk("c", 12.0), chunk("a", 3.0)]
    fused = rrf([(dense, 1.0, "dense"), (lexical, 2.0, "lexical")], k=60)
    by_id = {c.chunk.document_id: c for c in fused}
    assert by_id["a"].score == pytest.approx(1 / 61 + 2 / 62)
    assert by_id["c"].score == pytest.approx(1 / 63 + 2 / 61)
    assert by_id["b"].score == pytest.approx(1 / 62)
    assert [c.chunk.document_id for c in fused] == ["c", "a", "b"]
    assert by_id["a"].scores == {"dense": 0.9, "lexical": 3.0, "fused": by_id["a"].score}


def test_rrf_breaks_ties_deterministically() -> None:
    fused = rrf([([chunk("b")], 1.0, "dense"), ([chunk("a")], 1.0, "lexical")], k=60)
    assert [c.chunk.document_id for c in fused] == ["a", "b"]


def test_rerank_fuse_is_rrf_with_the_reranker_as_one_more_list() -> None:
    dense = [chunk(d, 1.0 - i / 10) for i, d in enumerate("abcdef")]
    lexical = [chunk("b", 9.0), chunk("a", 5.0)]
    cands = rrf([(dense, 1.0, "dense"), (lexical, 1.0, "lexical")], k=60)
    assert [c.chunk.document_id for c in cands] == list("abcdef")  # a and b tie: by id
    # Head = a, b, c; the reranker prefers c, then b, then a. d, e, f are not reranked.
    out = rerank_fuse(
        cands, [-5.0, 1.0, 9.0], signals={"dense": 1.0, "lexical": 1.0}, rerank_weight=1.0, k=5
    )
    ids = [c.chunk.document_id for c in out]
    # a: dense 1, lexical 2, rerank 3; b: 2, 1, 2; c: 3, missing (last: 3), 1.
    a, b, c = 1 / 6 + 1 / 7 + 1 / 8, 1 / 7 + 1 / 6 + 1 / 7, 1 / 8 + 1 / 8 + 1 / 6
    assert ids == ["b", "a", "c", "d", "e", "f"]
    assert [x.score for x in out[:3]] == pytest.approx([b, a, c])
    scores = [x.score for x in out]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    assert (out[0].scores["rerank"], out[2].scores["rerank"]) == (1.0, 9.0)
    # "skip": a signal that did not find a candidate adds nothing for it.
    cands = rrf([(dense, 1.0, "dense"), (lexical, 1.0, "lexical")], k=60)
    out = rerank_fuse(
        cands,
        [-5.0, 1.0, 9.0],
        signals={"dense": 1.0, "lexical": 1.0},
        rerank_weight=1.0,
        k=5,
        missing="skip",
    )
    assert out[2].score == pytest.approx(1 / 8 + 1 / 6)
    # Retrieval weight 0: the reranker's order alone.
    cands = rrf([([chunk(d) for d in "abc"], 1.0, "dense")], k=60)
    out = rerank_fuse(cands, [1.0, 3.0, 2.0], signals={"dense": 0.0}, rerank_weight=1.0, k=10)
    assert [c.chunk.document_id for c in out] == ["b", "c", "a"]


def test_rerank_fuse_agreeing_reranker_keeps_order() -> None:
    cands = rrf([([chunk(d, 1.0 - i / 10) for i, d in enumerate("abcd")], 1.0, "dense")], k=60)
    out = rerank_fuse(cands, [4.0, 3.0, 2.0, 1.0], signals={"dense": 1.0}, rerank_weight=1.0, k=10)
    assert [c.chunk.document_id for c in out] == list("abcd")


def test_collapse_keeps_the_best_chunk_per_document() -> None:
    cands = rrf([([chunk("a", 0, 1), chunk("b"), chunk("a", 0, 0)], 1.0, "dense")], k=60)
    assert [c.chunk.chunk_id for c in collapse_documents(cands)] == ["a#1", "b#0"]


# --------------------------------------------------------------------------- searcher


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_each_mode_finds_the_obvious_document(
    store: SqliteStore, embedder: FakeEmbedder, mode: Any
) -> None:
    result = Searcher(store, embedder).search(
        "kb", SearchRequest("programming language memory safety", top_k=3, mode=mode)
    )
    assert result.hits[0].document_id == "rust"
    assert [h.rank for h in result.hits] == list(range(1, len(result.hits) + 1))
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    assert result.mode == mode and result.reranked is False
    assert set(result.timings_ms) == set(STAGES)
    assert all(v >= 0 for v in result.timings_ms.values())
    hit = result.hits[0]
    assert hit.chunk_id == "rust#0" and hit.metadata == {"n": 3, "animal": False}
    assert hit.text.startswith("Rust is")


def test_lexical_mode_does_not_embed(store: SqliteStore, embedder: FakeEmbedder) -> None:
    Searcher(store, embedder).search("kb", SearchRequest("tea", mode="lexical"))
    assert embedder.query_calls == 0
    # And needs no embedder at all.
    hits = Searcher(store).search("kb", SearchRequest("tea", mode="lexical")).hits
    assert hits[0].document_id == "tea"


def test_hybrid_scores_carry_both_sides(store: SqliteStore, embedder: FakeEmbedder) -> None:
    hits = Searcher(store, embedder).search("kb", SearchRequest("green tea leaves")).hits
    assert hits[0].document_id == "tea"
    assert {"dense", "lexical", "fused"} <= set(hits[0].scores)


def test_filter_applies_to_every_mode(store: SqliteStore, embedder: FakeEmbedder) -> None:
    searcher = Searcher(store, embedder)
    for mode in ("dense", "lexical", "hybrid"):
        req = SearchRequest(
            "domesticated programming", top_k=10, mode=mode, filter={"animal": True}
        )
        docs = {h.document_id for h in searcher.search("kb", req).hits}
        assert docs <= {"cats", "dogs"} and docs


def test_collapse_returns_one_hit_per_document(store: SqliteStore, embedder: FakeEmbedder) -> None:
    searcher = Searcher(store, embedder)
    plain = searcher.search("kb", SearchRequest("cat cats purrs mammals", top_k=10))
    assert [h.document_id for h in plain.hits].count("cats") == 2
    collapsed = searcher.search(
        "kb", SearchRequest("cat cats purrs mammals", top_k=10, collapse=True)
    )
    ids = [h.document_id for h in collapsed.hits]
    assert ids.count("cats") == 1 and len(ids) == len(set(ids))
    assert [h.rank for h in collapsed.hits] == list(range(1, len(ids) + 1))


def test_rerank_reorders_the_head_using_both_signals(
    store: SqliteStore, embedder: FakeEmbedder
) -> None:
    tea = DOCS["tea"][0]
    reranker = FakeReranker(table={tea: 100.0})
    searcher = Searcher(store, embedder, reranker)
    base = searcher.search("kb", SearchRequest("embedded database engine", top_k=6))
    assert base.hits[0].document_id == "sqlite"
    req = SearchRequest("embedded database engine", top_k=6, rerank=True, rerank_top_n=6)
    result = searcher.search("kb", req)
    assert result.reranked and result.timings_ms["rerank"] >= 0
    assert reranker.calls and len(reranker.calls[0]) <= 6
    ids = [h.document_id for h in result.hits]
    assert "rerank" in result.hits[0].scores
    # Tea jumps up the list but the strong retrieval evidence for sqlite is not discarded.
    assert ids.index("tea") < [h.document_id for h in base.hits].index("tea")
    assert ids[0] == "sqlite"


def test_rerank_passages_are_truncated(store: SqliteStore, embedder: FakeEmbedder) -> None:
    reranker = FakeReranker()
    req = SearchRequest("tea", top_k=2, rerank=True, rerank_top_n=3, rerank_max_chars=5)
    Searcher(store, embedder, reranker).search("kb", req)
    assert all(len(p) <= 5 for _, p in reranker.calls[0])
    assert len(reranker.calls[0]) == 3


def test_models_can_be_passed_per_call(store: SqliteStore, embedder: FakeEmbedder) -> None:
    reranker = FakeReranker()
    result = Searcher(store).search(
        "kb", SearchRequest("tea", top_k=2, rerank=True), embedder=embedder, reranker=reranker
    )
    assert result.hits[0].document_id == "tea" and reranker.calls


@pytest.mark.parametrize(
    ("changes", "dense", "lexical"),
    [
        ({}, 50, 50),
        ({"rerank": True}, 100, 100),  # the reranked head's fusion needs the deeper lists
        ({"top_k": 70}, 70, 70),
        ({"dense_candidates": 7, "lexical_candidates": 9}, 10, 10),  # never fewer than top_k
        ({"dense_candidates": 30, "lexical_candidates": 200, "rerank": True}, 30, 200),
    ],
)
def test_hybrid_candidates_per_side(
    store: SqliteStore,
    embedder: FakeEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, Any],
    dense: int,
    lexical: int,
) -> None:
    asked: dict[str, int] = {}
    for side in ("dense", "lexical"):
        method = getattr(store, f"{side}_refs")

        def record(
            collection: str, query: Any, k: int, *rest: Any, _m: Any = method, _s: str = side
        ) -> Any:
            asked[_s] = k
            return _m(collection, query, k, *rest)

        monkeypatch.setattr(store, f"{side}_refs", record)
    Searcher(store, embedder, FakeReranker()).search("kb", SearchRequest("tea", **changes))
    assert asked == {"dense": dense, "lexical": lexical}


@pytest.mark.parametrize(
    "changes",
    [
        {"mode": "fuzzy"},
        {"top_k": 0},
        {"top_k": 1001},
        {"top_k": True},
        {"dense_candidates": 0},
        {"lexical_candidates": 1001},
        {"rerank_top_n": 0},
        {"fusion": FusionSpec("rrf", {"dense": 1.0}, k=-1)},
        {"fusion": FusionSpec("minmax", {"dense": -1.0, "lexical": 1.0})},
        {"fusion": FusionSpec("minmax", {"dense": 0.0, "lexical": 0.0})},
        {"fusion": FusionSpec("cosine")},  # type: ignore[arg-type]
        {"fusion": {"method": "rrf"}},  # a FusionSpec, not a mapping
        {"rerank_weight": -1.0},
        {"filter": {"$nope": 1}},
        {"rerank": True},  # no reranker configured
    ],
)
def test_invalid_requests_are_rejected(
    store: SqliteStore, embedder: FakeEmbedder, changes: dict[str, Any]
) -> None:
    req = SearchRequest("tea", **changes)
    with pytest.raises(InvalidInput):
        Searcher(store, embedder).search("kb", req)


def test_dense_without_embedder_is_rejected(store: SqliteStore) -> None:
    with pytest.raises(InvalidInput):
        Searcher(store).search("kb", SearchRequest("tea", mode="dense"))


def test_unknown_collection(store: SqliteStore, embedder: FakeEmbedder) -> None:
    with pytest.raises(CollectionNotFound):
        Searcher(store, embedder).search("nope", SearchRequest("tea"))


def test_empty_collection_returns_no_hits(tmp_path: Path, embedder: FakeEmbedder) -> None:
    s = SqliteStore(tmp_path / "empty")
    s.create_collection("e", embedder.name, embedder.dimension)
    result = Searcher(s, embedder, FakeReranker()).search("e", SearchRequest("x", rerank=True))
    assert result.hits == ()
    s.close()


@pytest.mark.slow
def test_real_models_rank_the_relevant_passage_first(tmp_path: Path) -> None:
    from ragserve.config import Settings
    from ragserve.models.manager import ModelManager

    settings = Settings()
    models = ModelManager.from_settings(settings)
    emb = models.embedder(settings.embedder)
    s = SqliteStore(tmp_path / "real")
    s.create_collection("kb", emb.name, emb.dimension)
    for doc_id, texts in DOCS.items():
        chunks = [Chunk(doc_id, j, t) for j, t in enumerate(texts)]
        s.upsert_document(
            "kb", Document(doc_id, " ".join(texts)), "h", chunks, emb.embed_documents(texts)
        )
    searcher = Searcher(s, emb, models.reranker(settings.reranker))
    for mode in ("dense", "hybrid"):
        for rerank in (False, True):
            req = SearchRequest("which animal is related to wolves?", mode=mode, rerank=rerank)
            assert searcher.search("kb", req).hits[0].document_id == "dogs"
    assert np.isfinite(searcher.search("kb", SearchRequest("tea", rerank=True)).hits[0].score)
    s.close()


def test_hybrid_reports_its_fusion_and_a_request_can_choose_another(
    store: SqliteStore, embedder: FakeEmbedder
) -> None:
    searcher = Searcher(store, embedder)
    result = searcher.search("kb", SearchRequest("green tea leaves"))
    assert result.fusion == {
        "method": "minmax",
        "k": 60,
        "adaptive": False,
        "weights": {"dense": 1.0, "lexical": 1.0},
    }
    auto = searcher.search("kb", SearchRequest("green tea leaves", fusion=FusionSpec("rrf", None)))
    assert auto.fusion is not None and auto.fusion["adaptive"] is True
    assert sum(auto.fusion["weights"].values()) == pytest.approx(1.0)
    assert searcher.search("kb", SearchRequest("tea", mode="dense")).fusion is None
    # The searcher's own default (from Settings in the service) applies when a request has none.
    lexical_only = Searcher(store, embedder, fusion=FusionSpec("rrf", {"lexical": 1.0}))
    got = lexical_only.search("kb", SearchRequest("green tea leaves")).fusion
    assert got is not None and got["weights"] == {"dense": 0.0, "lexical": 1.0}


def test_head_signals_follow_the_fusion_weights() -> None:
    from ragserve.search import head_signals

    # The fused rank weighs what both legs do together; each leg a quarter of that.
    assert head_signals("hybrid", {"dense": 1.0, "lexical": 1.0}, 1.0) == {
        "fused": 2.0,
        "dense": 0.5,
        "lexical": 0.5,
    }
    assert head_signals("hybrid", {"dense": 0.8, "lexical": 0.2}, 0.5) == pytest.approx(
        {"fused": 1.0, "dense": 0.4, "lexical": 0.1}
    )
    assert head_signals("dense", {}, 1.0) == {"dense": 1.0, "lexical": 1.0}


def test_a_search_whose_client_left_stops_before_the_rerank(
    store: SqliteStore, embedder: FakeEmbedder
) -> None:
    reranker = FakeReranker()
    searcher = Searcher(store, embedder, reranker)
    left = SearchRequest("tea", top_k=2, rerank=True, cancelled=lambda: True)
    with pytest.raises(ClientGone):
        searcher.search("kb", left)
    assert reranker.calls == []  # the costly stage never ran
    # Without rerank there is nothing to skip: the answer is cheap and returned.
    cheap = SearchRequest("tea", top_k=2, cancelled=lambda: True)
    assert searcher.search("kb", cheap).hits
    staying = SearchRequest("tea", top_k=2, rerank=True, cancelled=lambda: False)
    assert searcher.search("kb", staying).reranked and reranker.calls
