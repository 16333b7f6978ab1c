"""The HTTP API in process: every route, and every error status with a real request."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ragserve.config import Settings
from tests.fakes import error_of, make_service, make_settings, ready_client

DOCS = [
    {
        "id": "cats",
        "title": "Cats",
        "text": "Cats are small carnivorous mammals. They purr and chase mice.",
        "metadata": {"topic": "animals", "year": 2020},
    },
    {
        "id": "rust",
        "title": "Rust",
        "text": "Rust is a systems programming language focused on memory safety.",
        "metadata": {"topic": "programming", "year": 2015},
    },
    {
        "id": "python",
        "title": "Python",
        "text": "Python is a programming language loved for its readability.",
        "metadata": {"topic": "programming", "year": 1991},
    },
]


def _collection(client: TestClient, name: str = "docs", docs: list[dict[str, Any]] = DOCS) -> None:
    assert client.post("/v1/collections", json={"name": name}).status_code == 201
    r = client.post(f"/v1/collections/{name}/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["created"] * len(docs)


# ------------------------------------------------------------------------- health


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert "fake-embedder" in ready.json()["models"]


def test_readiness_names_the_missing_model_and_the_fix(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", model_dir=tmp_path / "empty-cache")
    for client in ready_client(settings, None):
        r = client.get("/readyz")
        assert r.status_code == 503
        assert "ragserve models pull bge-small-en-v1.5" in r.json()["reason"]
        assert client.get("/healthz").status_code == 200
        err = error_of(client.get("/v1/collections"))
        assert err["type"] == "unavailable"
        assert client.get("/v1/collections").status_code == 503


def test_openapi_has_stable_operation_ids(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {
        "healthz",
        "readyz",
        "create_collection",
        "list_collections",
        "get_collection",
        "delete_collection",
        "add_documents",
        "get_document",
        "delete_document",
        "search",
        "create_embeddings",
        "rerank",
    } <= ids


# ------------------------------------------------------------------------- collections


def test_collection_lifecycle(client: TestClient) -> None:
    created = client.post("/v1/collections", json={"name": "docs"})
    assert created.status_code == 201
    assert created.json() == {
        "name": "docs",
        "embedder": "fake-embedder",
        "dimension": 64,
        "documents": 0,
        "chunks": 0,
        "fusion": None,
    }
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201  # idempotent
    conflict = client.post("/v1/collections", json={"name": "docs", "embedder": "other-embedder"})
    assert conflict.status_code == 409
    assert error_of(conflict)["type"] == "conflict"
    assert [c["name"] for c in client.get("/v1/collections").json()["collections"]] == ["docs"]
    assert client.delete("/v1/collections/docs").status_code == 204
    missing = client.get("/v1/collections/docs")
    assert missing.status_code == 404
    assert "docs" in error_of(missing)["message"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"name": "bad name!"}, "name"),
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "ok", "unexpected": 1}, "unexpected"),
    ],
)
def test_invalid_collection_requests_are_422(
    client: TestClient, body: dict[str, Any], where: str
) -> None:
    r = client.post("/v1/collections", json=body)
    assert r.status_code == 422
    assert where in error_of(r)["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/collections", b'{"name": "x",'),
        ("/v1/collections/docs/search", b"not json at all"),
        ("/v1/embeddings", b'{"input": ["a"]'),
    ],
)
def test_a_body_that_is_not_json_is_400(client: TestClient, path: str, body: bytes) -> None:
    client.post("/v1/collections", json={"name": "docs"})
    before = client.get("/v1/collections").json()
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert error_of(r)["type"] == "bad_request"
    assert "not valid JSON" in error_of(r)["message"]
    assert client.get("/v1/collections").json() == before


def test_unknown_embedder_lists_valid_ones(client: TestClient) -> None:
    r = client.post("/v1/collections", json={"name": "x", "embedder": "nope"})
    assert r.status_code == 404
    assert "fake-embedder" in error_of(r)["message"]


# ------------------------------------------------------------------------- documents


def test_documents_created_unchanged_updated_and_deleted(client: TestClient) -> None:
    _collection(client)
    again = client.post("/v1/collections/docs/documents", json={"documents": DOCS})
    assert [x["status"] for x in again.json()["results"]] == ["unchanged"] * 3
    changed = dict(DOCS[0], text="Cats sleep most of the day.")
    r = client.post("/v1/collections/docs/documents", json={"documents": [changed]})
    assert r.json()["results"][0]["status"] == "updated"

    doc = client.get("/v1/collections/docs/documents/cats").json()
    assert doc["metadata"] == {"topic": "animals", "year": 2020}
    assert "".join(c["text"] for c in doc["chunks"]).startswith("Cats sleep")
    assert client.get("/v1/collections/docs").json()["documents"] == 3

    assert client.delete("/v1/collections/docs/documents/cats").status_code == 204
    assert client.get("/v1/collections/docs/documents/cats").status_code == 404
    assert client.delete("/v1/collections/docs/documents/cats").status_code == 404
    assert client.get("/v1/collections/docs").json()["documents"] == 2


def test_a_document_without_id_gets_a_stable_one(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "docs"})
    first = client.post("/v1/collections/docs/documents", json={"documents": [{"text": "hello"}]})
    second = client.post("/v1/collections/docs/documents", json={"documents": [{"text": "hello"}]})
    a, b = first.json()["results"][0], second.json()["results"][0]
    assert a["id"] == b["id"] and a["status"] == "created" and b["status"] == "unchanged"


def test_a_bad_document_fails_alone(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "docs"})
    r = client.post(
        "/v1/collections/docs/documents",
        json={"documents": [DOCS[0], {"id": "empty", "text": "   "}, DOCS[1]]},
    )
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["created", "failed", "created"]
    assert "no text" in results[1]["error"]
    assert client.get("/v1/collections/docs").json()["documents"] == 2


def test_documents_into_unknown_collection_is_404(client: TestClient) -> None:
    r = client.post("/v1/collections/nope/documents", json={"documents": DOCS})
    assert r.status_code == 404
    assert error_of(r)["type"] == "collection_not_found"


def test_too_many_documents_is_413(client: TestClient, settings: Settings) -> None:
    client.post("/v1/collections", json={"name": "docs"})
    docs = [{"text": f"doc {i}"} for i in range(settings.max_documents_per_request + 1)]
    r = client.post("/v1/collections/docs/documents", json={"documents": docs})
    assert r.status_code == 413
    assert str(settings.max_documents_per_request) in error_of(r)["message"]
    assert client.get("/v1/collections/docs").json()["documents"] == 0


def test_a_body_over_the_limit_is_413(client: TestClient, settings: Settings) -> None:
    client.post("/v1/collections", json={"name": "docs"})
    big = "x" * (settings.max_body_bytes + 10)
    r = client.post("/v1/collections/docs/documents", json={"documents": [{"text": big}]})
    assert r.status_code == 413
    assert error_of(r)["type"] == "payload_too_large"


def test_documents_body_that_is_not_json_is_400_and_wrong_shape_is_422(
    client: TestClient,
) -> None:
    client.post("/v1/collections", json={"name": "docs"})
    r = client.post(
        "/v1/collections/docs/documents",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert error_of(r)["type"] == "bad_request"
    assert "not valid JSON" in error_of(r)["message"]
    r = client.post("/v1/collections/docs/documents", json={"documents": [{"title": "no text"}]})
    assert r.status_code == 422
    assert error_of(r)["type"] == "invalid_request"


def test_multipart_upload_ingests_good_files_and_reports_bad_ones(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "docs"})
    files = [
        ("files", ("notes.md", b"# Notes\n\nOctopuses have three hearts.\n", "text/markdown")),
        ("files", ("broken.txt", bytes(range(256)) * 4, "text/plain")),
    ]
    r = client.post("/v1/collections/docs/documents", files=files)
    assert r.status_code == 200, r.text
    results = {x["id"]: x for x in r.json()["results"]}
    statuses = sorted(x["status"] for x in results.values())
    assert statuses == ["created", "failed"]
    failed = next(x for x in results.values() if x["status"] == "failed")
    assert failed["error"]
    hits = client.post("/v1/collections/docs/search", json={"query": "octopuses hearts"}).json()
    assert hits["results"] and "Octopuses" in hits["results"][0]["text"]


# ------------------------------------------------------------------------- search


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_search_modes_find_the_document(client: TestClient, mode: str) -> None:
    _collection(client)
    r = client.post(
        "/v1/collections/docs/search", json={"query": "memory safety language", "mode": mode}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["document_id"] == "rust"
    assert [h["rank"] for h in body["results"]] == list(range(1, len(body["results"]) + 1))
    assert body["timings_ms"]["total"] >= 0
    assert body["results"][0]["metadata"]["topic"] == "programming"


def test_search_with_filter_and_rerank(client: TestClient) -> None:
    _collection(client)
    r = client.post(
        "/v1/collections/docs/search",
        json={
            "query": "programming language",
            "filter": {"year": {"$lt": 2000}},
            "rerank": True,
            "top_k": 5,
        },
    )
    assert r.status_code == 200, r.text
    assert [h["document_id"] for h in r.json()["results"]] == ["python"]
    assert "rerank" in r.json()["timings_ms"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"query": "x", "top_k": 0}, 422, "top_k"),
        ({"query": "x", "top_k": 101}, 422, "top_k"),
        ({"query": ""}, 422, "query"),
        ({"query": "x" * 501}, 422, "query"),
        ({"query": "x", "mode": "fuzzy"}, 422, "mode"),
        ({"query": "x", "filter": {"year": {"$near": 3}}}, 422, "$near"),
    ],
)
def test_bad_searches_are_refused(
    client: TestClient, body: dict[str, Any], status: int, fragment: str
) -> None:
    _collection(client)
    r = client.post("/v1/collections/docs/search", json=body)
    assert r.status_code == status, r.text
    assert fragment in error_of(r)["message"]


def test_search_unknown_collection_is_404(client: TestClient) -> None:
    r = client.post("/v1/collections/nope/search", json={"query": "x"})
    assert r.status_code == 404


# ------------------------------------------------------------------------- models


def test_openai_embeddings(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"input": ["hello world", "goodbye"]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "fake-embedder"
    assert [d["index"] for d in body["data"]] == [0, 1]
    vec = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
    assert vec.shape == (64,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    assert body["usage"]["prompt_tokens"] == 3

    b64 = client.post(
        "/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype=np.float32)
    np.testing.assert_allclose(decoded, vec, rtol=1e-6)

    many_words = "the quick brown fox jumps over the lazy dog while seven wizards box jolly"
    full = client.post("/v1/embeddings", json={"input": many_words}).json()
    short = client.post("/v1/embeddings", json={"input": many_words, "dimensions": 8}).json()
    head = np.asarray(full["data"][0]["embedding"])[:8]
    cut = np.asarray(short["data"][0]["embedding"])
    assert cut.shape == (8,) and abs(float(np.linalg.norm(cut)) - 1) < 1e-5
    np.testing.assert_allclose(cut, head / np.linalg.norm(head), rtol=1e-5)  # Matryoshka-style


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"input": []}, 422),
        ({"input": "x", "model": "nope"}, 404),
        ({"input": "x", "dimensions": 65}, 422),
        ({"input": "x", "encoding_format": "int8"}, 422),
    ],
)
def test_bad_embedding_requests(client: TestClient, body: dict[str, Any], status: int) -> None:
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == status
    error_of(r)


def test_cohere_rerank(client: TestClient) -> None:
    r = client.post(
        "/v1/rerank",
        json={
            "query": "red apple",
            "documents": ["a red apple", {"text": "a green pear"}, "apple"],
            "top_n": 2,
            "return_documents": True,
        },
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [0, 2]
    assert results[0]["document"] == {"text": "a red apple"}
    assert 0 < results[1]["relevance_score"] < results[0]["relevance_score"] < 1


# ------------------------------------------------------------------------- protection


def test_api_keys(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=["s3cret"])
    for client in ready_client(settings, make_service(settings)):
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        missing = client.get("/v1/collections")
        assert missing.status_code == 401 and error_of(missing)["type"] == "unauthorized"
        wrong = client.get("/v1/collections", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.get("/v1/collections", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


class _BlockingEmbedder:
    """Holds every query embedding until released, to fill the model queue."""

    def __init__(self) -> None:
        from tests.fakes import FakeEmbedder

        self.inner = FakeEmbedder(64, "fake-embedder")
        self.entered = threading.Event()
        self.release = threading.Event()

    name = property(lambda self: self.inner.name)
    dimension = property(lambda self: self.inner.dimension)

    def embed_documents(self, texts: Any) -> Any:
        return self.inner.embed_documents(texts)

    def embed_queries(self, texts: Any, *, instruction: bool = True) -> Any:
        self.entered.set()
        assert self.release.wait(30)
        return self.inner.embed_queries(texts, instruction=instruction)

    def token_spans(self, text: str) -> Any:
        return self.inner.token_spans(text)


def test_full_model_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, embeddings_workers=1, embeddings_queue=0)
    embedder = _BlockingEmbedder()
    for client in ready_client(settings, make_service(settings, embedder=embedder)):
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(
                client.post, "/v1/embeddings", json={"input": "a", "input_type": "query"}
            )
            assert embedder.entered.wait(10)
            second = client.post("/v1/embeddings", json={"input": "b", "input_type": "query"})
            assert second.status_code == 429
            assert error_of(second)["type"] == "overloaded"
            assert int(second.headers["retry-after"]) >= 1
            embedder.release.set()
            assert first.result(timeout=30).status_code == 200
        assert client.post("/v1/embeddings", json={"input": "c"}).status_code == 200


def test_internal_errors_never_leak(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    _collection(client)
    service = client.app.state.readiness.service  # type: ignore[attr-defined]

    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(service, "search", boom)
    r = client.post("/v1/collections/docs/search", json={"query": "x"})
    assert r.status_code == 500
    assert error_of(r) == {"type": "internal_error", "message": "internal server error"}
    assert "secret" not in r.text


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    assert error_of(client.get("/v1/nope"))["type"] == "not_found"
    r = client.put("/v1/collections")
    assert r.status_code == 405 and error_of(r)["type"] == "method_not_allowed"
