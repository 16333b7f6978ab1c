"""An in-process app over the real service, store and registry, with fake models."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ragserve.api.app import create_app
from ragserve.config import Settings
from ragserve.models.catalog import Kind, ModelSpec, Pooling
from ragserve.models.manager import ModelManager
from ragserve.service import RetrievalService
from ragserve.store.base import open_store
from tests.fakes import FakeEmbedder, FakeReranker

FAKE_EMBEDDER = ModelSpec(
    name="fake-embedder",
    kind=Kind.EMBEDDER,
    description="test",
    licence="MIT",
    max_length=512,
    dimension=64,
    pooling=Pooling.MEAN,
    sources=(),
    builtin=False,
)
OTHER_EMBEDDER = ModelSpec(
    name="other-embedder",
    kind=Kind.EMBEDDER,
    description="test",
    licence="MIT",
    max_length=512,
    dimension=32,
    pooling=Pooling.MEAN,
    sources=(),
    builtin=False,
)
FAKE_RERANKER = ModelSpec(
    name="fake-reranker",
    kind=Kind.RERANKER,
    description="test",
    licence="MIT",
    max_length=512,
    sources=(),
    builtin=False,
)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "model_dir": tmp_path / "models",
        "embedder": "fake-embedder",
        "reranker": "fake-reranker",
        "chunk_tokens": 64,
        "chunk_overlap": 8,
        "max_documents_per_request": 50,
        "max_body_bytes": 256 * 1024,
        "max_top_k": 100,
        "max_query_chars": 500,
    }
    values.update(overrides)
    return Settings(**values)


def make_service(
    settings: Settings, embedder: Any | None = None, reranker: Any | None = None
) -> RetrievalService:
    manager = ModelManager.from_settings(settings)
    manager.provide(FAKE_EMBEDDER, embedder or FakeEmbedder(64, "fake-embedder"))
    manager.provide(OTHER_EMBEDDER, FakeEmbedder(32, "other-embedder"))
    manager.provide(FAKE_RERANKER, reranker or FakeReranker())
    return RetrievalService(settings, manager, open_store(settings))


def ready_client(settings: Settings, service: RetrievalService | None) -> Iterator[TestClient]:
    """A client once start-up has finished (ready, or failed for good)."""
    app = create_app(settings, service)
    state = app.state.readiness
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            deadline = time.monotonic() + 30
            while not (state.ready or state.failed) and time.monotonic() < deadline:
                time.sleep(0.01)
            yield client
    finally:
        if service is not None:
            service.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    yield from ready_client(settings, make_service(settings))


def error_of(response: Any) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"type", "message"}, body
    return dict(body["error"])
