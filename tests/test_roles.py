"""Roles and remote-model failures in process: a model server that cannot answer fails what needs
it with 503 and JSON, fails ingest per document without storing any half, and nothing else."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from ragserve.config import Settings
from ragserve.errors import ModelMismatch, ModelUnavailable
from ragserve.models.manager import ModelManager
from ragserve.models.remote import ModelClient, RemoteEmbedder
from ragserve.roles import check_remote_models, no_store
from ragserve.service import RetrievalService
from ragserve.store.base import CollectionInfo
from ragserve.types import Document
from tests.fakes import (
    FAKE_EMBEDDER,
    FAKE_RERANKER,
    FakeEmbedder,
    FakeReranker,
    Vectors,
    error_of,
    make_service,
    make_settings,
    ready_client,
)


class FlakyEmbedder(FakeEmbedder):
    """A remote embedder whose server is down until ``up`` is set."""

    def __init__(self) -> None:
        super().__init__(64, "fake-embedder")
        self.up = True
        self.document_calls = 0

    def _check(self) -> None:
        if not self.up:
            raise ModelUnavailable("model server http://models.test/v1/embeddings is unavailable")

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        self.document_calls += 1
        self._check()
        return super().embed_documents(texts)

    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> Vectors:
        self._check()
        return super().embed_queries(texts)


@pytest.fixture
def flaky() -> FlakyEmbedder:
    return FlakyEmbedder()


@pytest.fixture
def service(tmp_path: Path, flaky: FlakyEmbedder) -> Iterator[RetrievalService]:
    svc = make_service(make_settings(tmp_path, chunk_tokens=16, chunk_overlap=4), flaky)
    svc.create_collection("c")
    yield svc
    svc.close()


def _doc(i: int) -> Document:
    return Document(id=f"d{i}", text=" ".join(f"word{i}x{j}" for j in range(40)))


def test_ingest_fails_each_document_and_stores_no_half_when_the_model_server_is_down(
    service: RetrievalService, flaky: FlakyEmbedder
) -> None:
    service.ingest("c", [_doc(0)])
    flaky.up = False
    results = service.ingest("c", [_doc(i) for i in range(1, 7)], batch_chunks=8)
    assert [r.status for r in results] == ["failed"] * 6
    assert {r.error_type for r in results} == {"model_unavailable"}
    assert flaky.document_calls == 2, "once down, the rest of the ingest does not ask again"
    assert service.get_collection("c").documents == 1
    flaky.up = True  # the server is back: no restart, the same documents now go in
    results = service.ingest("c", [_doc(i) for i in range(1, 7)], batch_chunks=8)
    assert [r.status for r in results] == ["created"] * 6
    assert service.get_collection("c").documents == 7


def test_http_answers_503_json_for_what_needs_the_model_and_serves_the_rest(
    tmp_path: Path, flaky: FlakyEmbedder
) -> None:
    settings = make_settings(tmp_path)
    for client in ready_client(settings, make_service(settings, flaky)):
        assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
        docs = [{"id": "a", "text": "the octopus has three hearts"}]
        assert client.post("/v1/collections/kb/documents", json={"documents": docs}).is_success
        flaky.up = False
        for mode in ("dense", "hybrid"):
            r = client.post("/v1/collections/kb/search", json={"query": "heart", "mode": mode})
            assert r.status_code == 503
            assert error_of(r)["type"] == "model_unavailable"
        r = client.post("/v1/collections/kb/search", json={"query": "hearts", "mode": "lexical"})
        assert r.status_code == 200 and r.json()["results"][0]["document_id"] == "a"
        more = [{"id": "b", "text": "bees dance"}, {"id": "c", "text": "iron rusts"}]
        r = client.post("/v1/collections/kb/documents", json={"documents": more})
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "model_unavailable"
        assert [x["status"] for x in r.json()["results"]] == ["failed", "failed"]
        assert client.get("/v1/collections/kb/documents/b").status_code == 404
        flaky.up = True
        r = client.post("/v1/collections/kb/search", json={"query": "heart", "mode": "hybrid"})
        assert r.status_code == 200


def test_a_models_process_serves_models_and_opens_no_store(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, role="models")
    manager = ModelManager.from_settings(settings)
    manager.provide(FAKE_EMBEDDER, FakeEmbedder(64, "fake-embedder"))
    manager.provide(FAKE_RERANKER, FakeReranker())
    service = RetrievalService(settings, manager, no_store())
    for client in ready_client(settings, service):
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/collections").status_code == 404
        r = client.post("/v1/embeddings", json={"input": ["a b"], "input_type": "query"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 64
        r = client.post("/v1/rerank", json={"query": "a", "documents": ["a", "b"]})
        assert r.status_code == 200
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "ragserve_collection_documents" not in metrics.text
        assert client.get("/v1/keys").status_code == 404  # no scoped keys: nothing stateful
        assert client.get("/v1/jobs").status_code == 404
    data = tmp_path / "data"  # no store, no control database (keys, jobs): nothing written
    assert not data.exists() or not any(data.iterdir()), list(data.iterdir())


# ------------------------------------------------------------------------------ start-up checks


def _remote(handler: httpx.MockTransport) -> RemoteEmbedder:
    client = ModelClient("http://models.test", retries=0, transport=handler)
    tokenizer = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    return RemoteEmbedder(FAKE_EMBEDDER, client, tokenizer)


def _answer(dimension: int, model: str = "fake-embedder") -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        n = len(json.loads(request.content)["input"])
        data = [{"index": i, "embedding": [1.0] + [0.0] * (dimension - 1)} for i in range(n)]
        return httpx.Response(200, json={"data": data, "model": model})

    return httpx.MockTransport(handle)


def _info(name: str = "kb", dimension: int = 64, embedder: str = "fake-embedder") -> CollectionInfo:
    return CollectionInfo(name, embedder, dimension, 0, 0)


def test_start_up_refuses_a_server_that_serves_another_model() -> None:
    check_remote_models(_remote(_answer(64)), None, [_info()])
    with pytest.raises(ModelMismatch, match="32-d vectors"):
        check_remote_models(_remote(_answer(32)), None, [_info()])
    with pytest.raises(ModelMismatch, match="'other', expected 'fake-embedder'"):
        check_remote_models(_remote(_answer(64, "other")), None, [_info()])
    with pytest.raises(ModelMismatch, match="collection 'kb' holds 32-d vectors"):
        check_remote_models(_remote(_answer(64)), None, [_info(dimension=32)])


def test_start_up_goes_on_when_the_model_server_is_not_up_yet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused")

    with caplog.at_level(logging.WARNING, logger="ragserve.roles"):
        check_remote_models(
            _remote(httpx.MockTransport(refuse)), None, [_info(), _info("x", 32, "other")]
        )
    text = caplog.text
    assert "is not answering yet" in text
    assert "collection 'x' uses embedder other" in text


# ------------------------------------------------------------------------------ remote tokenizing


class _Forward:
    """A MockTransport handler that hands each request to a models process's app (in process),
    and can be switched off (the model server is down)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.up = True
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if not self.up:
            raise httpx.ConnectError("Connection refused")
        r = self.client.post(request.url.path, content=request.content,
                             headers={"content-type": "application/json"})  # fmt: skip
        return httpx.Response(r.status_code, content=r.content, headers=r.headers)


def _models_service(tmp_path: Path) -> tuple[Settings, RetrievalService]:
    settings = make_settings(tmp_path / "m", role="models")
    manager = ModelManager.from_settings(settings)
    manager.provide(FAKE_EMBEDDER, FakeEmbedder(64, "fake-embedder"))
    manager.provide(FAKE_RERANKER, FakeReranker())
    return settings, RetrievalService(settings, manager, no_store())


_MARKDOWN = "# Octopus\n\n" + " ".join(f"w{i}" for i in range(90))
DOCS = [
    Document(id="md", title="Hearts", text=_MARKDOWN + "\n\n## Blood\n\nIt is blue, copper. " * 3),
    Document(id="plain", text="Bees dance to say where the flowers are. " * 12),
    Document(id="ü", text="naïve café — Ünïcode\tand tabs, 日本語 too " * 6),
]


def _chunks(service: RetrievalService) -> list[Any]:
    return [
        [(c.text, c.start, c.end) for c in service.get_document("c", d.id).chunks] for d in DOCS
    ]


def test_an_api_whose_model_server_tokenizes_cuts_the_same_chunks_as_a_local_tokenizer(
    tmp_path: Path,
) -> None:
    """ragserve's /v1/tokenize, produced by the models process's route and parsed by the remote
    embedder: the same chunks, offsets and texts as a process tokenizing itself."""
    models_settings, models = _models_service(tmp_path)
    for models_client in ready_client(models_settings, models):
        forward = _Forward(models_client)
        client = ModelClient(
            "http://models.test", retries=0, transport=httpx.MockTransport(forward)
        )
        remote = RemoteEmbedder(FAKE_EMBEDDER, client, None)  # the model server tokenizes
        api = make_service(make_settings(tmp_path / "a", chunk_tokens=16, chunk_overlap=4), remote)
        local = make_service(make_settings(tmp_path / "l", chunk_tokens=16, chunk_overlap=4))
        for service in (api, local):
            service.create_collection("c")
            assert [r.status for r in service.ingest("c", DOCS)] == ["created"] * 3
        assert _chunks(api) == _chunks(local)
        assert forward.paths.count("/v1/tokenize") >= len(DOCS)
        r = models_client.post("/v1/tokenize", json={"input": "a b", "model": "fake-embedder"})
        assert r.status_code == 200 and r.json()["data"][0]["tokens"] == 2
        r = models_client.post("/v1/tokenize", json={"input": [], "model": "fake-embedder"})
        assert r.status_code == 422
        api.close()
        local.close()


def test_ingest_fails_per_document_when_the_tokenizing_server_is_down_and_recovers(
    tmp_path: Path,
) -> None:
    models_settings, models = _models_service(tmp_path)
    for models_client in ready_client(models_settings, models):
        forward = _Forward(models_client)
        client = ModelClient(
            "http://models.test", retries=1, transport=httpx.MockTransport(forward)
        )
        remote = RemoteEmbedder(FAKE_EMBEDDER, client, None, timeout=2.0)
        settings = make_settings(tmp_path / "a", chunk_tokens=16, chunk_overlap=4)
        for api in ready_client(settings, make_service(settings, remote)):
            assert api.post("/v1/collections", json={"name": "c"}).status_code == 201
            forward.up = False
            body = {"documents": [{"id": d.id, "text": d.text} for d in DOCS]}
            r = api.post("/v1/collections/c/documents", json=body)
            assert r.status_code == 503 and r.json()["error"]["type"] == "model_unavailable"
            assert [x["status"] for x in r.json()["results"]] == ["failed"] * 3
            # retried once (a refused connection is safe to retry), then the rest not sent
            assert forward.paths == ["/v1/tokenize"] * 2
            assert api.get("/v1/collections/c").json()["documents"] == 0
            forward.up = True
            r = api.post("/v1/collections/c/documents", json=body)
            assert r.status_code == 200
            assert [x["status"] for x in r.json()["results"]] == ["created"] * 3
