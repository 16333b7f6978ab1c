"""How the documents route takes input in: limits and per-document errors (in-process app over
fake models; uploads are parsed in a real parser process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ragserve.config import Settings
from tests.fakes import error_of, make_service, make_settings, ready_client


@pytest.fixture
def small(tmp_path: Path) -> Iterator[TestClient]:
    settings: Settings = make_settings(
        tmp_path, max_documents_per_request=3, max_document_bytes=400
    )
    client = next(ready := ready_client(settings, make_service(settings)))
    client.post("/v1/collections", json={"name": "docs"})
    yield client
    next(ready, None)


def test_too_many_files_is_413_with_the_json_error_body(small: TestClient) -> None:
    files = [("files", (f"n{i}.txt", b"some text", "text/plain")) for i in range(5)]
    r = small.post("/v1/collections/docs/documents", files=files)
    assert r.status_code == 413, r.text
    assert error_of(r) == {
        "type": "payload_too_large",
        "message": "more than 3 documents or files in one request; the limit is 3",
    }


def test_too_many_json_documents_is_413(small: TestClient) -> None:
    docs = [{"id": str(i), "text": "t"} for i in range(4)]
    r = small.post("/v1/collections/docs/documents", json={"documents": docs})
    assert r.status_code == 413
    assert error_of(r)["type"] == "payload_too_large"


def test_max_document_bytes_holds_per_json_document_as_for_files(small: TestClient) -> None:
    docs = [
        {"id": "big", "text": "x " * 200, "title": "over by its title"},
        {"id": "ok", "text": "A small document."},
    ]
    r = small.post("/v1/collections/docs/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    big, ok = r.json()["results"]
    assert big["status"] == "failed"
    assert big["error"] == "record 'big' is 417 bytes, over the limit of 400 (max_document_bytes)"
    assert ok["status"] == "created"
    files = [
        ("files", ("big.txt", b"x " * 201, "text/plain")),
        ("files", ("ok.txt", b"A small file.", "text/plain")),
    ]
    r = small.post("/v1/collections/docs/documents", files=files)
    big_file, ok_file = r.json()["results"]
    assert big_file["status"] == "failed" and "(max_document_bytes)" in big_file["error"]
    assert ok_file["status"] == "created"


def test_lone_surrogates_fail_their_own_document_or_request(small: TestClient) -> None:
    body = b'{"documents": [{"id": "bad", "text": "a\\ud800"}, {"id": "good", "text": "b"}]}'
    r = small.post(
        "/v1/collections/docs/documents",
        content=body,
        headers={"content-type": "application/json"},
    )
    bad, good = r.json()["results"]
    assert bad["status"] == "failed" and "lone surrogate" in bad["error"]
    assert good["status"] == "created"
    for path, payload in [
        ("/v1/rerank", b'{"query": "q", "documents": ["ok", "\\udc80"]}'),
        ("/v1/embeddings", b'{"input": ["ok", "\\ud800"], "input_type": "query"}'),
        ("/v1/collections/docs/search", b'{"query": "\\ud800"}'),
    ]:
        r = small.post(path, content=payload, headers={"content-type": "application/json"})
        assert r.status_code == 422, (path, r.text)
        assert error_of(r)["type"] == "invalid_request"


def test_the_parser_processes_end_with_the_app(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    ready = ready_client(settings, make_service(settings))
    client = next(ready)
    client.post("/v1/collections", json={"name": "docs"})
    files = [("files", ("a.txt", b"some text", "text/plain"))]
    assert client.post("/v1/collections/docs/documents", files=files).status_code == 200
    (worker,) = client.app.state.parsing.pool._all  # type: ignore[attr-defined]
    assert worker.alive()
    next(ready, None)  # leaves the client: the app shuts down
    assert worker.proc.wait(timeout=10) is not None


def test_a_json_document_over_max_document_chars_fails_alone(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_document_chars=100)
    ready = ready_client(settings, make_service(settings))
    client = next(ready)
    client.post("/v1/collections", json={"name": "docs"})
    docs = [{"id": "long", "text": "x" * 101}, {"id": "ok", "text": "fits"}]
    r = client.post("/v1/collections/docs/documents", json={"documents": docs})
    long, ok = r.json()["results"]
    assert long["error"] == "the text is 101 characters, over the limit of 100 (max_document_chars)"
    assert ok["status"] == "created"
    next(ready, None)
