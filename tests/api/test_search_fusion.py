"""The ``fusion`` option of the search route: passed through, defaulted, validated (422)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.fakes import error_of, make_service, make_settings, ready_client

DOCS = [
    {"id": "rust", "text": "Rust is a systems programming language focused on memory safety."},
    {"id": "python", "text": "Python is a programming language with dynamic typing."},
    {"id": "tea", "text": "Green tea is brewed from the leaves of Camellia sinensis."},
    {"id": "sqlite", "text": "SQLite is an embedded database engine with full-text search."},
    {"id": "cats", "text": "Cats are small domesticated carnivorous mammals."},
]
URL = "/v1/collections/kb/search"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path)
    for c in ready_client(settings, make_service(settings)):
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        assert c.post("/v1/collections/kb/documents", json={"documents": DOCS}).status_code == 200
        yield c


def ids(client: TestClient, body: dict[str, Any]) -> list[str]:
    r = client.post(URL, json=body)
    assert r.status_code == 200, r.text
    return [h["document_id"] for h in r.json()["results"]]


@pytest.mark.parametrize(
    "fusion",
    [
        {},
        {"method": "rrf"},
        {"method": "rrf", "k": 0, "weights": {"dense": 1, "lexical": 1}},
        {"method": "minmax", "weights": "auto"},
        {"method": "zscore", "weights": {"dense": 0.7, "lexical": 0.3}},
        {"method": "dbsf", "weights": {"dense": 1.0}},
    ],
)
def test_every_fusion_variant_answers(client: TestClient, fusion: dict[str, Any]) -> None:
    found = ids(client, {"query": "memory safety language", "fusion": fusion})
    assert found and found[0] == "rust"


def test_the_weights_are_used(client: TestClient) -> None:
    query = "green memory search"
    lexical = ids(client, {"query": query, "mode": "lexical"})
    dense = ids(client, {"query": query, "mode": "dense"})
    assert lexical != dense[: len(lexical)]  # the two legs disagree on this query
    for method in ("rrf", "minmax"):
        only_lexical = {"method": method, "weights": {"dense": 0, "lexical": 1}}
        # (BM25 ties these three: fusion breaks ties by chunk id, so compare them as a set)
        found = ids(client, {"query": query, "fusion": only_lexical})
        assert set(found[: len(lexical)]) == set(lexical) and len(found) > len(lexical)
        only_dense = {"method": method, "weights": {"dense": 1, "lexical": 0}}
        assert ids(client, {"query": query, "fusion": only_dense, "top_k": len(dense)}) == dense


@pytest.mark.parametrize(
    ("fusion", "fragment"),
    [
        ({"method": "cosine"}, "method"),
        ({"k": -1}, "k"),
        ({"k": 10_001}, "k"),
        ({"weights": {"dense": -0.5}}, "weights"),
        ({"weights": {"sparse": 1.0}}, "weights"),
        ({"weights": "equal"}, "weights"),
        ({"weights": {"dense": 0, "lexical": 0}}, "weight"),
        ({"weights": {"dense": 1e9}}, "weight"),
        ({"alpha": 0.5}, "alpha"),
        ("rrf", "fusion"),
    ],
)
def test_bad_fusion_options_are_422(client: TestClient, fusion: Any, fragment: str) -> None:
    r = client.post(URL, json={"query": "tea", "fusion": fusion})
    assert r.status_code == 422, r.text
    assert fragment in error_of(r)["message"]


def test_the_default_fusion_comes_from_settings(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, fusion_method="rrf", fusion_weights={"dense": 0.0, "lexical": 1.0}
    )
    for c in ready_client(settings, make_service(settings)):
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        assert c.post("/v1/collections/kb/documents", json={"documents": DOCS}).status_code == 200
        query = "green memory search"
        lexical = ids(c, {"query": query, "mode": "lexical"})
        assert set(ids(c, {"query": query})[: len(lexical)]) == set(lexical)
        # A request's own options win, key by key (here: the weights; method from settings).
        dense = ids(c, {"query": query, "mode": "dense"})
        body = {"query": query, "fusion": {"weights": {"dense": 1, "lexical": 0}}}
        assert ids(c, {**body, "top_k": len(dense)}) == dense


def test_a_collection_default_fusion_is_kept_shown_used_and_cleared(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    service = make_service(settings)
    for c in ready_client(settings, service):
        only_lexical = {"method": "rrf", "weights": {"dense": 0.0, "lexical": 1.0}}
        r = c.post("/v1/collections", json={"name": "kb", "fusion": only_lexical})
        assert r.status_code == 201, r.text
        assert r.json()["fusion"] == {**only_lexical, "k": 60}
        assert c.post("/v1/collections/kb/documents", json={"documents": DOCS}).status_code == 200
        query = "green memory search"
        lexical = ids(c, {"query": query, "mode": "lexical"})
        dense = ids(c, {"query": query, "mode": "dense"})
        assert ids(c, {"query": query})[: len(lexical)] == lexical  # the collection's default
        # A request's own keys win over the collection's, the rest come from it.
        body = {"query": query, "fusion": {"weights": {"dense": 1, "lexical": 0}}}
        assert ids(c, {**body, "top_k": len(dense)}) == dense
        # Replaced, then cleared; kept across a restart of the service (it is in the store).
        r = c.patch("/v1/collections/kb", json={"fusion": {"weights": "auto"}})
        assert r.status_code == 200, r.text
        assert r.json()["fusion"]["weights"] == "auto"
        assert c.get("/v1/collections").json()["collections"][0]["fusion"]["weights"] == "auto"
        r = c.post(URL, json={"query": query, "explain": True})
        assert r.json()["explain"]["fusion"]["adaptive"] is True
        assert c.patch("/v1/collections/kb", json={"fusion": None}).json()["fusion"] is None
        server_default = {"method": "minmax", "weights": {"dense": 1, "lexical": 1}}
        assert ids(c, {"query": query}) == ids(c, {"query": query, "fusion": server_default})
        assert service.collection_fusion("kb") is None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"fusion": {"method": "nope"}}, "method"),
        ({"fusion": {"weights": {"dense": 0, "lexical": 0}}}, "at least one fusion weight"),
        ({}, "fusion"),
    ],
)
def test_bad_collection_defaults_are_422_and_change_nothing(
    client: TestClient, body: dict[str, Any], fragment: str
) -> None:
    r = client.patch("/v1/collections/kb", json=body)
    assert r.status_code == 422, r.text
    assert fragment in error_of(r)["message"]
    assert client.get("/v1/collections/kb").json()["fusion"] is None
    r = client.post("/v1/collections", json={"name": "other", **body})
    assert r.status_code == 422 or body == {}, r.text
    assert client.patch("/v1/collections/none", json={"fusion": None}).status_code == 404
