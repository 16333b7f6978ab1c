"""The HTTP edge under hostile or unusual input: filters at their limits, document ids with any
printable character, authentication challenges, HEAD probes and the offline docs pages."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from ragserve.api.app import create_app
from ragserve.api.errors import error_response
from ragserve.config import Settings
from ragserve.service import RetrievalService
from tests.fakes import (
    FakeEmbedder,
    FakeReranker,
    error_of,
    make_service,
    make_settings,
    ready_client,
)


def _ingest(client: TestClient | httpx.Client, docs: list[dict[str, Any]]) -> None:
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    r = client.post("/v1/collections/docs/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["created"] * len(docs), r.text


def _search(client: TestClient, flt: Any) -> Any:
    body = {"query": "common words", "mode": "lexical", "top_k": 50, "filter": flt}
    return client.post("/v1/collections/docs/search", json=body)


# ------------------------------------------------------------------------- filters


def test_in_with_exactly_1024_values_returns_the_right_documents(client: TestClient) -> None:
    _ingest(
        client,
        [
            {"id": f"d{n}", "text": f"common words number {n}", "metadata": {"n": n}}
            for n in (0, 511, 1023, 1024, 5000)
        ],
    )
    r = _search(client, {"n": {"$in": list(range(1024))}})
    assert r.status_code == 200, r.text
    assert {h["document_id"] for h in r.json()["results"]} == {"d0", "d511", "d1023"}
    r = _search(client, {"n": {"$nin": list(range(1024))}})
    assert {h["document_id"] for h in r.json()["results"]} == {"d1024", "d5000"}


@pytest.mark.parametrize(
    ("flt", "fragment"),
    [
        ({"n": {"$in": list(range(1025))}}, "filter.n.$in has more than 1024 values"),
        ({"n": {"$lt": 10**20}}, "filter.n.$lt: integer out of range"),
        ({"n": {"$nin": [1, -(2**63) - 1]}}, "filter.n.$nin[1]: integer out of range"),
        ({"n": "a\x00b"}, "NUL"),
    ],
)
def test_filters_out_of_range_are_422_naming_the_problem(
    client: TestClient, flt: Any, fragment: str
) -> None:
    _ingest(client, [{"id": "a", "text": "common words", "metadata": {"n": 1}}])
    r = _search(client, flt)
    assert r.status_code == 422, r.text
    assert fragment in error_of(r)["message"]


@pytest.mark.parametrize("value", ['"\\ud800"', '"ok \\udfff"', '{"$in": ["x", "\\udbff"]}'])
def test_a_lone_surrogate_in_a_filter_is_422(client: TestClient, value: str) -> None:
    _ingest(client, [{"id": "a", "text": "common words", "metadata": {"n": 1}}])
    raw = '{"query": "common", "filter": {"n": ' + value + "}}"
    r = client.post(
        "/v1/collections/docs/search", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert "lone surrogate" in error_of(r)["message"]


@pytest.mark.parametrize(
    ("number", "status"), [("9" * 5000, 400), ("1e400", 422), ("-1e400", 422), ("1e-400", 200)]
)
def test_numbers_json_cannot_hold_are_client_errors(
    client: TestClient, number: str, status: int
) -> None:
    _ingest(client, [{"id": "a", "text": "common words", "metadata": {"n": 1}}])
    raw = '{"query": "common", "filter": {"n": ' + number + "}}"
    r = client.post(
        "/v1/collections/docs/search", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text


def test_an_error_message_quoting_a_lone_surrogate_still_renders(client: TestClient) -> None:
    _ingest(client, [{"id": "a", "text": "common words"}])
    raw = '{"query": "common", "filter": {"n": {"$bad\\ud800": 1}}}'
    r = client.post(
        "/v1/collections/docs/search", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert "unknown operator" in error_of(r)["message"]
    # Any message that carries one unescaped is escaped rather than failing to render.
    body = error_response(422, "invalid_request", "bad \ud800 value").body
    assert json.loads(body)["error"]["message"] == "bad \\ud800 value"


# ------------------------------------------------------------------------- document ids

ODD_IDS = [
    "a/b",
    "dir/sub/file.txt",
    "/leading",
    "trailing/",
    "100%",
    "a%2Fb",  # a literal percent sequence, not a slash
    "with space",
    "question?mark#hash",
    "naïve/日本語/😀",
    "a/../b",
    "..",
    ".",
]


def _document_url(doc_id: str) -> str:
    """Percent-encode every reserved character; an id of only dots has them encoded too, as
    clients remove '.' and '..' path segments (RFC 3986 section 5.2.4) before sending."""
    encoded = quote(doc_id, safe="")
    if set(encoded) == {"."}:
        encoded = encoded.replace(".", "%2E")
    return "/v1/collections/docs/documents/" + encoded


@contextlib.contextmanager
def live_server(settings: Settings, service: RetrievalService) -> Iterator[httpx.Client]:
    """The app behind a real uvicorn on an ephemeral loopback port, ready; a client to it.
    The service is closed on the way out."""
    app = create_app(settings, service)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="live-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "server never became ready"
                time.sleep(0.01)
            yield http
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        service.close()


@pytest.fixture
def live(settings: Settings) -> Iterator[httpx.Client]:
    """A real server (Starlette's TestClient decodes a path twice, so ``%252F`` would reach the
    app as ``/``; a real server does not)."""
    with live_server(settings, make_service(settings)) as http:
        yield http


def test_any_printable_document_id_can_be_fetched_and_deleted(live: httpx.Client) -> None:
    docs = [{"id": doc_id, "text": f"common words {i}"} for i, doc_id in enumerate(ODD_IDS)]
    _ingest(live, [*docs, {"id": "x", "text": "y"}])
    for doc_id in ODD_IDS:
        url = _document_url(doc_id)
        r = live.get(url)
        assert r.status_code == 200, (doc_id, r.text)
        assert r.json()["id"] == doc_id
        assert live.delete(url).status_code == 204, doc_id
        assert error_of(live.get(url))["type"] == "document_not_found", doc_id
    assert live.get("/v1/collections/docs/documents/x").status_code == 200
    assert live.get("/v1/collections/docs").json()["documents"] == 1


def test_slashes_may_also_be_sent_unencoded(client: TestClient) -> None:
    _ingest(client, [{"id": "dir/sub/file.txt", "text": "common words"}])
    r = client.get("/v1/collections/docs/documents/dir/sub/file.txt")
    assert r.status_code == 200 and r.json()["id"] == "dir/sub/file.txt"
    assert client.get("/v1/collections/docs/documents/dir/sub").status_code == 404
    assert client.delete("/v1/collections/docs/documents/dir%2Fsub%2Ffile.txt").status_code == 204


def test_a_missing_document_id_is_422_and_other_routes_still_match(client: TestClient) -> None:
    _ingest(client, [{"id": "a", "text": "common words"}])
    r = client.get("/v1/collections/docs/documents/")
    assert r.status_code == 422 and "document_id" in error_of(r)["message"]
    r = client.get("/v1/collections/docs/documents/" + "x" * 513)
    assert r.status_code == 422
    assert client.post("/v1/collections/docs/search", json={"query": "common"}).status_code == 200


def test_the_openapi_path_of_documents_stays_a_plain_parameter(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/collections/{name}/documents/{document_id}" in paths
    assert not any(":path" in p for p in paths)


# ------------------------------------------------------------------------- auth


def test_401_carries_a_bearer_challenge(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=["s3cret"])
    for client in ready_client(settings, make_service(settings)):
        missing = client.get("/v1/collections")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="ragserve"'
        wrong = client.get("/v1/collections", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == (
            'Bearer realm="ragserve", error="invalid_token"'
        )
        basic = client.get("/v1/collections", headers={"Authorization": "Basic eDp5"})
        assert basic.headers["www-authenticate"].startswith("Bearer ")
        ok = client.get("/v1/collections", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and "www-authenticate" not in ok.headers


# ------------------------------------------------------------------------- probes


def test_head_on_health_and_readiness(client: TestClient) -> None:
    for path in ("/healthz", "/readyz"):
        r = client.head(path)
        assert r.status_code == 200, path
        assert r.content == b""
    client.app.state.readiness.ready = False  # type: ignore[attr-defined]
    assert client.head("/readyz").status_code == 503
    assert client.head("/healthz").status_code == 200
    schema = client.get("/openapi.json").json()["paths"]
    assert set(schema["/healthz"]) == {"get"} and set(schema["/readyz"]) == {"get"}


# ------------------------------------------------------------------------- docs pages


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


@pytest.mark.parametrize(("page", "expected"), [("/docs", 3), ("/redoc", 2)])
def test_docs_pages_load_every_asset_from_ragserve(
    client: TestClient, page: str, expected: int
) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(r.text)
    assert len(parser.urls) == expected, parser.urls
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url  # no external host
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    # Nothing else external in the page itself (the OpenAPI URL is relative too).
    assert not re.search(r"https?://", r.text), r.text
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/rerank", {"query": "q", "documents": ["a", "b"], "top_n": True}),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "1"}),
        ("/v1/embeddings", {"input": ["a"], "dimensions": True}),
        ("/v1/collections/docs/search", {"query": "q", "top_k": True}),
        ("/v1/collections/docs/search", {"query": "q", "top_k": "5"}),
        ("/v1/collections/docs/search", {"query": "q", "rerank_top_n": 2.5}),
    ],
)
def test_integer_fields_take_json_integers_only(
    client: TestClient, path: str, body: dict[str, Any]
) -> None:
    """The OpenAPI document says integer: a boolean or a string is not one (pydantic's lax
    mode took `true` as 1, which schemathesis reports as invalid data accepted)."""
    client.post("/v1/collections", json={"name": "docs"})
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert error_of(response)["type"] == "invalid_request"


def test_integral_floats_are_json_integers(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "docs"})
    response = client.post("/v1/collections/docs/search", json={"query": "q", "top_k": 5.0})
    assert response.status_code == 200, response.text


class GatedQueries(FakeEmbedder):
    """Query embeddings wait for ``gate`` (a search held in its first stage)."""

    def __init__(self) -> None:
        super().__init__(64, "fake-embedder")
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.finished = threading.Event()

    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> Any:
        self.entered.set()
        assert self.gate.wait(30)
        try:
            return super().embed_queries(texts)
        finally:
            self.finished.set()


def test_a_search_whose_client_hung_up_skips_its_rerank(settings: Settings) -> None:
    """Over a real socket: the client gives up while its reranked search embeds the query; the
    search then stops before the rerank (nobody would read the answer)."""
    embedder, reranker = GatedQueries(), FakeReranker()
    service = make_service(settings, embedder=embedder, reranker=reranker)
    embedder.gate.set()  # /readyz and the ingest embed no query
    try:
        with live_server(settings, service) as http:
            _ingest(http, [{"id": "a", "text": "tea leaves"}, {"id": "b", "text": "tea cups"}])
            embedder.gate.clear()
            with pytest.raises(httpx.TimeoutException):
                http.post(
                    "/v1/collections/docs/search",
                    json={"query": "tea", "rerank": True},
                    timeout=httpx.Timeout(10, read=0.5),
                )
            assert embedder.entered.is_set()  # the search was running when the client left
            time.sleep(0.3)  # the server sees the connection close
            embedder.gate.set()
            assert embedder.finished.wait(10)
            time.sleep(0.5)  # time enough for a rerank that should not happen
            assert reranker.calls == []
            r = http.post("/v1/collections/docs/search", json={"query": "tea", "rerank": True})
            assert r.status_code == 200 and reranker.calls  # a client that waits is reranked
    finally:
        embedder.gate.set()  # never leave a server thread waiting on it
