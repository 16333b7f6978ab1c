"""The store contract, run over every backend (see conftest.STORE_FACTORIES)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ragserve.errors import CollectionNotFound, Conflict, DocumentNotFound, InvalidInput
from ragserve.filters import MAX_DEPTH, matches, parse_filter
from ragserve.store.base import MAX_K, Store, backend_names, resolve_backend
from ragserve.types import Chunk, Document
from tests.fakes import random_unit, seed_of

DIM = 16


def add(
    store: Store,
    doc_id: str,
    texts: list[str],
    vectors: np.ndarray | None = None,
    metadata: dict[str, Any] | None = None,
    collection: str = "c",
    content_hash: str = "h1",
) -> str:
    doc = Document(id=doc_id, text=" ".join(texts), title=f"T {doc_id}", metadata=metadata or {})
    chunks = [
        Chunk(doc_id, i, t, start=i, end=i + len(t), metadata={"i": i}) for i, t in enumerate(texts)
    ]
    if vectors is None:
        vectors = random_unit(len(texts), DIM, seed=seed_of(doc_id))
    return store.upsert_document(collection, doc, content_hash, chunks, vectors)


@pytest.fixture
def coll(store: Store) -> Store:
    store.create_collection("c", "fake", DIM)
    return store


# --------------------------------------------------------------------------- collections


def test_create_collection_is_idempotent_for_the_same_embedder(store: Store) -> None:
    info = store.create_collection("c", "fake", DIM)
    assert (info.name, info.embedder, info.dimension, info.documents, info.chunks) == (
        "c",
        "fake",
        DIM,
        0,
        0,
    )
    again = store.create_collection("c", "fake", DIM)
    assert again.created_at == info.created_at
    assert [c.name for c in store.list_collections()] == ["c"]


@pytest.mark.parametrize(("embedder", "dim"), [("other", DIM), ("fake", DIM + 1)])
def test_create_collection_conflicts_with_another_embedder(
    store: Store, embedder: str, dim: int
) -> None:
    store.create_collection("c", "fake", DIM)
    with pytest.raises(Conflict):
        store.create_collection("c", embedder, dim)


@pytest.mark.parametrize(
    "name", ["", "-x", ".x", "a/b", "a b", "x" * 65, "naïve", "a;drop", None, 3]
)
def test_invalid_collection_names_are_rejected(store: Store, name: Any) -> None:
    with pytest.raises(InvalidInput):
        store.create_collection(name, "fake", DIM)


@pytest.mark.parametrize("dim", [0, -1, True, 1.5])
def test_invalid_dimension_is_rejected(store: Store, dim: Any) -> None:
    with pytest.raises(InvalidInput):
        store.create_collection("c", "fake", dim)
    assert store.list_collections() == []


def test_list_get_and_delete_collections(store: Store) -> None:
    store.create_collection("b", "fake", DIM)
    store.create_collection("a.1", "fake", DIM)
    add(store, "d1", ["one", "two"], collection="b")
    add(store, "d2", ["three"], collection="b")
    assert [c.name for c in store.list_collections()] == ["a.1", "b"]
    assert len(store.dense_search("b", random_unit(1, DIM)[0], 5)) == 3
    info = store.get_collection("b")
    assert (info.documents, info.chunks) == (2, 3)
    store.delete_collection("b")
    assert [c.name for c in store.list_collections()] == ["a.1"]
    with pytest.raises(CollectionNotFound):
        store.get_collection("b")
    with pytest.raises(CollectionNotFound):
        store.delete_collection("b")
    with pytest.raises(CollectionNotFound):
        store.dense_search("b", random_unit(1, DIM)[0], 5)
    store.create_collection("b", "other", DIM + 1)  # a fresh, empty collection
    info = store.get_collection("b")
    assert (info.embedder, info.dimension, info.chunks) == ("other", DIM + 1, 0)
    assert store.lexical_search("b", "one", 5) == []
    add(store, "d3", ["one"], vectors=random_unit(1, DIM + 1), collection="b")
    assert [h.document_id for h in store.dense_search("b", random_unit(1, DIM + 1)[0], 5)] == ["d3"]


def test_operations_on_unknown_collection(store: Store) -> None:
    v = random_unit(1, DIM)
    with pytest.raises(CollectionNotFound):
        store.get_collection("nope")
    with pytest.raises(CollectionNotFound):
        add(store, "d", ["x"], collection="nope")
    with pytest.raises(CollectionNotFound):
        store.get_document_hash("nope", "d")
    with pytest.raises(CollectionNotFound):
        store.get_document("nope", "d")
    with pytest.raises(CollectionNotFound):
        store.delete_document("nope", "d")
    with pytest.raises(CollectionNotFound):
        store.dense_search("nope", v[0], 3)
    with pytest.raises(CollectionNotFound):
        store.lexical_search("nope", "x", 3)


def test_collection_options_are_kept_replaced_and_gone_with_the_collection(store: Store) -> None:
    store.create_collection("a", "fake", DIM)
    store.create_collection("b", "fake", DIM)
    assert store.collection_options("a") == {}
    store.set_collection_options("a", {"fusion": {"method": "rrf", "weights": "auto", "k": 5}})
    assert store.collection_options("a") == {"fusion": {"method": "rrf", "weights": "auto", "k": 5}}
    assert store.collection_options("b") == {}
    store.set_collection_options("a", {"fusion": {"method": "minmax"}})
    assert store.collection_options("a") == {"fusion": {"method": "minmax"}}
    with pytest.raises(CollectionNotFound):
        store.collection_options("nope")
    with pytest.raises(CollectionNotFound):
        store.set_collection_options("nope", {})
    store.delete_collection("a")
    store.create_collection("a", "fake", DIM)  # a new collection of the same name starts bare
    assert store.collection_options("a") == {}


def test_collections_are_isolated(store: Store) -> None:
    store.create_collection("a", "fake", DIM)
    store.create_collection("b", "fake", DIM)
    add(store, "d", ["apples"], collection="a")
    add(store, "d", ["bananas"], collection="b")
    assert [h.text for h in store.lexical_search("a", "apples bananas", 5)] == ["apples"]
    assert [h.text for h in store.dense_search("b", random_unit(1, DIM)[0], 5)] == ["bananas"]


# --------------------------------------------------------------------------- documents


def test_upsert_get_and_hash(coll: Store) -> None:
    assert coll.get_document_hash("c", "d1") is None
    assert add(coll, "d1", ["alpha", "beta"], metadata={"year": 2020}) == "created"
    assert coll.get_document_hash("c", "d1") == "h1"
    doc = coll.get_document("c", "d1")
    assert (doc.id, doc.title, doc.metadata, doc.content_hash) == (
        "d1",
        "T d1",
        {"year": 2020},
        "h1",
    )
    assert [(c.index, c.text, c.start, c.metadata) for c in doc.chunks] == [
        (0, "alpha", 0, {"i": 0}),
        (1, "beta", 1, {"i": 1}),
    ]
    assert doc.chunks[0].id == "d1#0"


def test_upsert_replaces_old_chunks(coll: Store) -> None:
    add(coll, "d1", ["alpha", "beta", "gamma"])
    v = random_unit(1, DIM, seed=99)
    assert add(coll, "d1", ["delta"], vectors=v, content_hash="h2") == "updated"
    doc = coll.get_document("c", "d1")
    assert [c.text for c in doc.chunks] == ["delta"]
    assert doc.content_hash == "h2"
    assert doc.updated_at >= doc.created_at
    assert coll.lexical_search("c", "alpha beta gamma", 10) == []
    hits = coll.dense_search("c", v[0], 10)
    assert [(h.chunk_id, h.text) for h in hits] == [("d1#0", "delta")]
    info = coll.get_collection("c")
    assert (info.documents, info.chunks) == (1, 1)


def test_document_without_chunks(coll: Store) -> None:
    doc = Document(id="empty", text="")
    assert coll.upsert_document("c", doc, "h", [], np.zeros((0, DIM), np.float32)) == "created"
    assert coll.get_document("c", "empty").chunks == ()


def test_list_documents_by_metadata(coll: Store) -> None:
    add(coll, "b", ["x"], metadata={"sync_source": "/docs", "sync_path": "b.md"}, content_hash="hb")
    add(coll, "a", ["y"], metadata={"sync_source": "/docs", "sync_path": "a.md"}, content_hash="ha")
    add(coll, "c", ["z"], metadata={"sync_source": "/other"}, content_hash="hc")
    add(coll, "d", ["w"], metadata={"odd key": "/docs"}, content_hash="hd")
    refs = coll.list_documents("c", {"sync_source": "/docs"})
    assert [(r.id, r.content_hash, r.metadata["sync_path"]) for r in refs] == [
        ("a", "ha", "a.md"),
        ("b", "hb", "b.md"),
    ]
    assert [r.id for r in coll.list_documents("c")] == ["a", "b", "c", "d"]
    assert [r.id for r in coll.list_documents("c", {"odd key": "/docs"})] == ["d"]
    assert coll.list_documents("c", {"sync_source": "/none"}) == []
    with pytest.raises(CollectionNotFound):
        coll.list_documents("nope")


def test_chunk_windows_read_index_ranges_in_one_snapshot(coll: Store) -> None:
    add(coll, "d1", ["a0", "a1", "a2", "a3"])
    add(coll, "d2", ["b0"])
    got = coll.chunk_windows("c", [("d1", 1, 2), ("d2", -3, 5), ("gone", 0, 9), ("d1", 3, 99)])
    assert [[(ch.id, ch.text, ch.start, ch.metadata) for ch in w] for w in got] == [
        [("d1#1", "a1", 1, {"i": 1}), ("d1#2", "a2", 2, {"i": 2})],
        [("d2#0", "b0", 0, {"i": 0})],
        [],
        [("d1#3", "a3", 3, {"i": 3})],
    ]
    assert coll.chunk_windows("c", []) == []
    with pytest.raises(CollectionNotFound):
        coll.chunk_windows("nope", [("d1", 0, 1)])


def test_many_chunk_windows_come_back_in_order(coll: Store) -> None:
    add(coll, "d1", ["a0", "a1", "a2", "a3"])
    add(coll, "d2", ["b0"])
    windows = [("d1" if i % 3 else "d2", i % 4, i % 4 + i % 2) for i in range(450)]
    got = coll.chunk_windows("c", windows)
    assert [[ch.id for ch in w] for w in got] == [
        [f"{d}#{i}" for i in range(lo, hi + 1) if i < (4 if d == "d1" else 1)]
        for d, lo, hi in windows
    ]


@pytest.mark.parametrize(
    "vectors",
    [
        np.zeros((2, DIM + 1), np.float32),
        np.zeros((3, DIM), np.float32),
        np.zeros((DIM,), np.float32),
        np.full((2, DIM), np.nan, np.float32),
    ],
)
def test_bad_vectors_are_rejected_and_nothing_changes(coll: Store, vectors: np.ndarray) -> None:
    add(coll, "d1", ["keep me"])
    with pytest.raises(InvalidInput):
        add(coll, "d1", ["new", "text"], vectors=vectors)
    with pytest.raises(InvalidInput):
        add(coll, "d2", ["new", "text"], vectors=vectors)
    assert [c.text for c in coll.get_document("c", "d1").chunks] == ["keep me"]
    assert coll.get_document_hash("c", "d2") is None
    assert coll.get_collection("c").chunks == 1


def test_bad_documents_are_rejected(coll: Store) -> None:
    v = random_unit(1, DIM)
    with pytest.raises(InvalidInput):  # chunk of another document
        coll.upsert_document("c", Document(id="a", text="x"), "h", [Chunk("b", 0, "x")], v)
    with pytest.raises(InvalidInput):  # duplicate chunk index
        coll.upsert_document(
            "c",
            Document(id="a", text="x"),
            "h",
            [Chunk("a", 0, "x"), Chunk("a", 0, "y")],
            random_unit(2, DIM),
        )
    with pytest.raises(InvalidInput):  # metadata that is not JSON
        coll.upsert_document(
            "c", Document(id="a", text="x", metadata={"x": object()}), "h", [Chunk("a", 0, "x")], v
        )
    with pytest.raises(InvalidInput):
        coll.upsert_document("c", Document(id="", text="x"), "h", [Chunk("", 0, "x")], v)
    with pytest.raises(InvalidInput):
        coll.upsert_document("c", Document(id="a", text="x"), "", [Chunk("a", 0, "x")], v)
    assert coll.get_collection("c").documents == 0


def test_delete_document_removes_it_from_every_index(coll: Store) -> None:
    v = random_unit(2, DIM, seed=5)
    add(coll, "gone", ["zebra stripes", "zebra herd"], vectors=v)
    add(coll, "kept", ["lion pride"])
    coll.delete_document("c", "gone")
    assert coll.get_document_hash("c", "gone") is None
    with pytest.raises(DocumentNotFound):
        coll.get_document("c", "gone")
    assert coll.lexical_search("c", "zebra", 10) == []
    assert all(h.document_id == "kept" for h in coll.dense_search("c", v[0], 10))
    info = coll.get_collection("c")
    assert (info.documents, info.chunks) == (1, 1)
    with pytest.raises(DocumentNotFound):
        coll.delete_document("c", "gone")
    add(coll, "gone", ["zebra again"])  # the id can be reused
    assert [h.document_id for h in coll.lexical_search("c", "zebra", 10)] == ["gone"]


# --------------------------------------------------------------------------- search


def test_dense_search_returns_nearest_chunks_with_their_data(coll: Store) -> None:
    vectors = random_unit(30, DIM, seed=3)
    for d in range(10):
        add(
            coll,
            f"d{d}",
            [f"text {d}-{i}" for i in range(3)],
            vectors=vectors[3 * d : 3 * d + 3],
            metadata={"n": d},
        )
    hits = coll.dense_search("c", vectors[7], 5)
    assert len(hits) == 5
    top = hits[0]
    assert (top.document_id, top.chunk_index, top.chunk_id, top.text) == (
        "d2",
        1,
        "d2#1",
        "text 2-1",
    )
    assert top.metadata == {"n": 2} and top.chunk_metadata == {"i": 1}
    assert top.score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    expected = np.argsort(-(vectors @ vectors[7]))[:5]
    assert [int(h.document_id[1:]) * 3 + h.chunk_index for h in hits] == expected.tolist()
    assert len(coll.dense_search("c", vectors[0], 100)) == 30  # k above the count: all


def test_refs_rank_like_searches_and_hydrate_only_what_still_exists(coll: Store) -> None:
    vectors = random_unit(6, DIM, seed=11)
    add(coll, "a", ["otter river", "otter den", "salmon run"], vectors=vectors[:3])
    add(coll, "b", ["otter sea", "kelp forest", "sea urchin"], vectors=vectors[3:])
    for refs, full in (
        (coll.dense_refs("c", vectors[1], 4), coll.dense_search("c", vectors[1], 4)),
        (coll.lexical_refs("c", "otter", 4), coll.lexical_search("c", "otter", 4)),
    ):
        assert [(r.chunk_id, r.score) for r in refs] == [(h.chunk_id, h.score) for h in full]
        assert coll.hydrate("c", refs) == full
        assert coll.hydrate("c", refs[::-1]) == full[::-1]  # in the order asked
    refs = coll.lexical_refs("c", "otter", 10)
    assert {r.document_id for r in refs} == {"a", "b"}
    coll.delete_document("c", "a")  # between the index read and the hydration
    assert [h.document_id for h in coll.hydrate("c", refs)] == ["b"]
    assert coll.hydrate("c", []) == []
    with pytest.raises(CollectionNotFound):
        coll.hydrate("missing", refs)


def test_collection_embedder(coll: Store) -> None:
    assert coll.collection_embedder("c") == "fake"
    with pytest.raises(CollectionNotFound):
        coll.collection_embedder("missing")


def test_lexical_search_ranks_by_bm25_with_stemming(coll: Store) -> None:
    add(coll, "a", ["The runner was running fast through the park"])
    add(coll, "b", ["Quantum chromodynamics describes quarks"])
    add(coll, "c", ["A park with trees"])
    hits = coll.lexical_search("c", "runs", 10)
    assert [h.document_id for h in hits] == ["a"]
    hits = coll.lexical_search("c", "running in the park", 10)
    assert [h.document_id for h in hits] == ["a", "c"]
    assert hits[0].score > hits[1].score > 0
    assert coll.lexical_search("c", "", 5) == []
    assert coll.lexical_search("c", "   ?!  ", 5) == []


@pytest.mark.parametrize(
    "query",
    [
        '"unbalanced',
        "AND",
        "OR NOT",
        "park*",
        "(park",
        "text: park",
        "NEAR(park trees)",
        "^park",
        "-park",
        "park AND",
        "a'b",
        "x\x00y",
        "Ω ünïcödé",
        "col:park OR",
    ],
)
def test_lexical_search_never_raises_syntax_errors(coll: Store, query: str) -> None:
    add(coll, "c", ["A park with trees and text"])
    coll.lexical_search("c", query, 5)


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1, True, 2.5, "3"])
def test_k_out_of_range_is_rejected(coll: Store, k: Any) -> None:
    with pytest.raises(InvalidInput):
        coll.dense_search("c", random_unit(1, DIM)[0], k)
    with pytest.raises(InvalidInput):
        coll.lexical_search("c", "x", k)


@pytest.mark.parametrize("shape", [(DIM + 1,), (2, DIM), (DIM, 1), ()])
def test_query_vector_of_wrong_dimension_is_rejected(coll: Store, shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInput):
        coll.dense_search("c", np.ones(shape, np.float32), 3)


@pytest.mark.parametrize(
    "bad",
    [
        {"$foo": 1},
        {"a": {"$bad": 1}},
        {"a": None},
        {"a b": 1},
        {"a": {"$in": []}},
        {"$or": {}},
        [1],
        "x",
        {"a": {"$gt": True}},
        {"a": {"$exists": 1}},
        {"x')--": 1},
        {"a": {"$in": list(range(1025))}},
        {"a": {"$lt": 10**20}},
        {"a": 2**63},
        {"a": {"$nin": [1, -(2**63) - 1]}},
        {"a": "\ud800"},
        {"a": {"$in": ["ok", "x\udfffy"]}},
        {"a": "a\x00b"},
    ],
)
def test_malformed_filter_is_rejected(coll: Store, bad: Any) -> None:
    with pytest.raises(InvalidInput):
        coll.dense_search("c", random_unit(1, DIM)[0], 3, bad)
    with pytest.raises(InvalidInput):
        coll.lexical_search("c", "x", 3, bad)


# --------------------------------------------------------------------------- filters

METAS: list[dict[str, Any]] = [
    {"year": 2019, "kind": "paper", "tags": ["bio", "med"], "date": "2019-05-01", "n": 1.5},
    {"year": 2020, "kind": "paper", "tags": ["bio"], "date": "2020-01-31T12:00:00"},
    {"year": 2021, "kind": "note", "tags": [], "nested": {"a": 1}, "flag": True},
    {"year": "2022", "kind": "note", "flag": False, "date": "2022-12-01"},
    {"kind": "paper", "nested": {"a": 2, "b": "x"}, "n": 10},
    {"year": 2023.0, "kind": "PAPER", "tags": "bio", "nested": 5},
]

FILTERS: list[dict[str, Any]] = [
    {"kind": "paper"},
    {"kind": {"$ne": "paper"}},
    {"year": {"$gte": 2020}},
    {"year": {"$gt": 2019, "$lt": 2023}},
    {"year": {"$lte": 2021}},
    {"year": 2023},
    {"year": {"$in": [2019, "2022"]}},
    {"year": {"$nin": [2019, 2020]}},
    {"tags": "bio"},
    {"tags": {"$in": ["med", "x"]}},
    {"tags": {"$exists": True}},
    {"tags": {"$exists": False}},
    {"flag": True},
    {"flag": False},
    {"flag": {"$ne": True}},
    {"date": {"$gte": "2020-01-01"}},
    {"date": {"$lt": "2020-02-01"}},
    {"nested.a": {"$gte": 2}},
    {"nested.b": "x"},
    {"nested": 5},
    {"n": {"$gt": 1}},
    {"$or": [{"kind": "note"}, {"year": {"$lt": 2020}}]},
    {"$and": [{"kind": "paper"}, {"tags": {"$exists": True}}]},
    {"kind": "paper", "year": {"$exists": True}},
    {"$or": [{"$and": [{"kind": "note"}, {"flag": True}]}, {"nested.a": 2}]},
    {},
]


@pytest.mark.parametrize("raw", FILTERS, ids=[str(f) for f in FILTERS])
def test_filters_match_the_reference_semantics(coll: Store, raw: dict[str, Any]) -> None:
    for i, meta in enumerate(METAS):
        add(coll, f"d{i}", [f"common word {i}", f"common other {i}"], metadata=meta)
    node = parse_filter(raw)
    expected = {f"d{i}" for i, meta in enumerate(METAS) if matches(node, meta)}
    dense = coll.dense_search("c", random_unit(1, DIM, seed=9)[0], 100, raw)
    lexical = coll.lexical_search("c", "common", 100, raw)
    assert {h.document_id for h in dense} == expected
    assert {h.document_id for h in lexical} == expected
    assert len(dense) == len(lexical) == 2 * len(expected)


def test_filtered_search_does_not_under_return(coll: Store) -> None:
    vectors = random_unit(600, DIM, seed=11)
    for d in range(300):
        add(
            coll,
            f"d{d}",
            [f"shared {d} a", f"shared {d} b"],
            vectors=vectors[2 * d : 2 * d + 2],
            metadata={"rare": d % 37 == 0, "g": d % 3},
        )
    rare = {f"d{d}" for d in range(300) if d % 37 == 0}  # 9 documents, 18 chunks
    for seed in range(5):
        q = random_unit(1, DIM, seed=100 + seed)[0]
        hits = coll.dense_search("c", q, 10, {"rare": True})
        assert len(hits) == 10 and {h.document_id for h in hits} <= rare
        scores = vectors @ q
        allowed = [i for i in range(600) if (i // 2) % 37 == 0]
        best = sorted(allowed, key=lambda i: -scores[i])[:10]
        assert [int(h.document_id[1:]) * 2 + (h.chunk_index) for h in hits] == best
        assert len(coll.dense_search("c", q, 50, {"rare": True})) == 18
        assert len(coll.dense_search("c", q, 150, {"g": 1})) == 150
        assert len(coll.lexical_search("c", "shared", 18, {"rare": True})) == 18


def _ids(hits: list[Any]) -> set[str]:
    return {h.document_id for h in hits}


def _check_against_reference(
    store: Store, raw: dict[str, Any], metas: list[dict[str, Any]]
) -> None:
    expected = {f"d{i}" for i, meta in enumerate(metas) if matches(parse_filter(raw), meta)}
    assert _ids(store.dense_search("c", random_unit(1, DIM, seed=9)[0], 100, raw)) == expected
    assert _ids(store.lexical_search("c", "common", 100, raw)) == expected


BIG_METAS: list[dict[str, Any]] = [
    {"n": 0, "tag": "v0"},
    {"n": 517, "tag": ["x", "v517"]},
    {"n": 1023.0, "tag": "v1023"},
    {"n": 1024, "tag": "v1024"},
    {"n": "5", "tag": True},
    {"n": [2000, 7], "tag": False},
    {"n": 2**63 - 1, "tag": "big"},
    {"n": -(2**63), "tag": "small"},
    {"tag": "none"},
]


@pytest.mark.parametrize(
    "raw",
    [
        {"n": {"$in": list(range(1024))}},  # exactly the limit: 0, 517, 1023.0 and 7 (array)
        {"n": {"$nin": list(range(1024))}},
        {"tag": {"$in": [f"v{i}" for i in range(1023)] + [True]}},
        {"tag": {"$nin": [f"v{i}" for i in range(1022)] + [False, "x"]}},
        {"n": {"$in": [*range(1020), "5", 1024.0, 2**63 - 1, -(2**63)]}},
        {"$or": [{"n": {"$in": list(range(i, i + 1024))}} for i in range(0, 4096, 1024)]},
        {"n": 2**63 - 1},
        {"n": {"$gte": 2**62}},
        {"n": {"$lte": -(2**63)}},
        {"n": {"$gt": -1e300, "$lt": 1.5e300}},
    ],
    ids=[
        "in-1024",
        "nin-1024",
        "in-strings",
        "nin-mixed",
        "in-types",
        "or-of-ins",
        "int64-max",
        "gte-2**62",
        "int64-min",
        "float-range",
    ],
)
def test_filters_at_the_documented_limits_match_the_reference(
    coll: Store, raw: dict[str, Any]
) -> None:
    for i, meta in enumerate(BIG_METAS):
        add(coll, f"d{i}", [f"common word {i}"], metadata=meta)
    _check_against_reference(coll, raw, BIG_METAS)


def _deep(width: int, nested_first: bool) -> dict[str, Any]:
    """MAX_DEPTH levels of alternating $or/$and, ``width`` conditions beside each nested part."""
    node: dict[str, Any] = {"n": {"$in": list(range(0, 2048, 2))}}
    for level in range(MAX_DEPTH):
        op = "$and" if level % 2 else "$or"
        others: list[dict[str, Any]] = [
            {"n": {"$ne": 10_000 + 100 * level + i}} for i in range(width)
        ]
        if level % 4 == 3:
            others[0] = {"tag": {"$exists": False}}
        node = {op: [node, *others] if nested_first else [*others, node]}
    return node


@pytest.mark.parametrize("nested_first", [True, False])
def test_the_largest_filters_the_parser_accepts_compile(coll: Store, nested_first: bool) -> None:
    # 16 levels x 62 conditions + 1 = 993 conditions: SQLite's OR chains once nested this way
    # passed its 1,000-level expression depth.
    raw = _deep(62, nested_first)
    metas = [{"n": i, "tag": "t"} if i % 3 else {"n": i} for i in range(8)]
    for i, meta in enumerate(metas):
        add(coll, f"d{i}", [f"common word {i}"], metadata=meta)
    _check_against_reference(coll, raw, metas)


SCALE_FILTERS = {
    "1%": {"bucket": {"$lt": 1}},
    "10%": {"bucket": {"$gte": 90}},
    "50%": {"$or": [{"tenant": {"$in": ["t0", "t2", "t4", "t6", "t8"]}}]},
    "90%": {"bucket": {"$nin": list(range(10, 20))}},
    "dates": {"day": {"$gte": "2024-03-01", "$lt": "2024-03-15"}, "tags": "even"},
    "none": {"bucket": {"$gt": 1000}},
}


@pytest.mark.parametrize("paths", ["default", "graph-and-post-filter"])
def test_filters_at_scale_are_exact_and_never_under_return(
    coll: Store, paths: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Selective and broad filters over 600 documents (1,200 chunks), after replacements and
    deletes: every hit passes, nothing allowed is missing when k covers the allowed set, and the
    top 10 are the exact top 10 (dense: at least 9 of them on an ANN index)."""
    if paths != "default":  # the SQLite store's large-allowed-set paths, at this size
        monkeypatch.setattr("ragserve.store.sqlite.ann.FILTER_EXACT_MAX", 20)
        monkeypatch.setattr("ragserve.store.sqlite.lexical.TERM_SET_MAX", 20)
    metas: dict[str, dict[str, Any]] = {}
    vectors: dict[str, np.ndarray] = {}

    def put(i: int, bucket: int) -> None:
        doc = f"d{i}"
        metas[doc] = {
            "bucket": bucket,
            "tenant": f"t{i % 10}",
            "day": f"2024-03-{1 + i % 28:02d}",
            "tags": ["even" if i % 2 == 0 else "odd", f"n{i}"],
        }
        vectors[doc] = random_unit(2, DIM, seed=i * 7 + bucket)
        words = " ".join(["common"] * (1 + i % 5))
        texts = [f"{words} alpha{i}", f"common beta{i % 13}"]
        add(coll, doc, texts, vectors=vectors[doc], metadata=metas[doc])

    for i in range(600):
        put(i, i % 100)
    for i in range(0, 600, 7):  # replaced: new bucket, new vectors
        put(i, (i + 50) % 100)
    for i in range(3, 600, 11):
        coll.delete_document("c", f"d{i}")
        del metas[f"d{i}"], vectors[f"d{i}"]
    query = random_unit(1, DIM, seed=4242)[0]
    for name, raw in SCALE_FILTERS.items():
        node = parse_filter(raw)
        allowed = sorted(d for d, m in metas.items() if matches(node, m))
        chunks = {f"{d}#{j}" for d in allowed for j in range(2)}
        everything = len(chunks) + 5
        # Exact sets: every allowed chunk and nothing else.
        dense_all = coll.dense_search("c", query, everything, raw)
        assert {h.chunk_id for h in dense_all} == chunks, name
        lexical_all = coll.lexical_search("c", "common", everything, raw)
        assert {h.chunk_id for h in lexical_all} == chunks, name
        # Top 10: as many as there can be, all allowed, the best ones.
        scores = sorted(
            ((float(vectors[d][j] @ query), f"{d}#{j}") for d in allowed for j in range(2)),
            reverse=True,
        )
        best = [cid for _, cid in scores[:10]]
        dense = [h.chunk_id for h in coll.dense_search("c", query, 10, raw)]
        assert len(dense) == min(10, len(chunks)), name
        assert set(dense) <= chunks, name
        assert len(set(dense) & set(best)) >= min(9, len(best)), name
        lexical = coll.lexical_search("c", "common", 10, raw)
        assert [h.chunk_id for h in lexical] == [h.chunk_id for h in lexical_all[:10]], name


# --------------------------------------------------------------------------- registry


def test_backend_registry_rejects_unknown_names_listing_valid_ones() -> None:
    assert "sqlite" in backend_names()
    with pytest.raises(InvalidInput, match="sqlite"):
        resolve_backend("nosuch")
    assert callable(resolve_backend("sqlite"))
