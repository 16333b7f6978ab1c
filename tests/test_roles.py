"""Roles and remote-model failures in process: a model server that cannot answer fails what needs
it with 503 and JSON, fails ingest per document without storing any half, and nothing else."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

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
