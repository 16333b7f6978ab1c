"""The served-model layer: per-model load locks, one load per model, the public snapshot."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragserve.models.embedder import Embedder
from ragserve.models.manager import ModelManager
from ragserve.models.reranker import Reranker
from ragserve.search import MODES, SearchRequest, SearchResult
from ragserve.service import RetrievalService
from ragserve.types import Document
from tests.fakes import (
    FAKE_RERANKER,
    OTHER_EMBEDDER,
    FakeEmbedder,
    FakeReranker,
    make_service,
    make_settings,
)


class SlowLoad:
    """Builds a reranker only once ``release`` is set (a model file that takes long to load)."""

    def __init__(self) -> None:
        self.loading = threading.Event()
        self.release = threading.Event()
        self.loads = 0

    def __call__(self) -> Reranker:
        self.loads += 1
        self.loading.set()
        assert self.release.wait(30)
        return FakeReranker()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RetrievalService]:
    svc = make_service(make_settings(tmp_path))
    svc.create_collection("c")
    svc.ingest("c", [Document(f"d{i}", f"tea number {i} grows on hills") for i in range(5)])
    try:
        yield svc
    finally:
        svc.close()


def in_thread(fn: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)  # type: ignore[operator]
    thread.start()
    return thread, out


def test_searches_without_rerank_keep_answering_while_the_reranker_loads(
    service: RetrievalService,
) -> None:
    slow = SlowLoad()
    service.models.register(FAKE_RERANKER, slow)
    reranking, reranked = in_thread(
        lambda: service.search("c", SearchRequest("tea hills", rerank=True))
    )
    try:
        assert slow.loading.wait(10)  # the first rerank search is loading the reranker
        plain, answers = in_thread(
            lambda: [service.search("c", SearchRequest("tea", mode=m)) for m in MODES]
        )
        # ... and another model loads meanwhile: each model has its own load lock.
        service.models.register(OTHER_EMBEDDER, lambda: FakeEmbedder(32, "other-embedder"))
        other, loaded = in_thread(lambda: service.models.embedder("other-embedder"))
        plain.join(10)  # with one lock for every model these would wait for the load
        other.join(10)
        assert answers, "searches without rerank waited for the reranker's load"
        assert all(r.hits for r in answers[0])  # type: ignore[attr-defined]
        assert loaded, "a model's load waited for another's"
        assert not reranked  # ... while the rerank search still waits for its model
        loads = {r.name for r in service.models.snapshot().loads}
        assert "fake-reranker" not in loads
    finally:
        slow.release.set()
        reranking.join(10)
    result = reranked[0]
    assert isinstance(result, SearchResult) and result.reranked
    assert "fake-reranker" in {r.name for r in service.models.snapshot().loads}


def test_concurrent_first_uses_load_a_model_once(service: RetrievalService) -> None:
    slow = SlowLoad()
    service.models.register(FAKE_RERANKER, slow)
    threads = [in_thread(lambda: service.models.reranker("fake-reranker")) for _ in range(4)]
    assert slow.loading.wait(10)
    slow.release.set()
    for thread, _ in threads:
        thread.join(10)
    models = [out[0] for _, out in threads]
    assert slow.loads == 1 and all(m is models[0] for m in models)


def test_served_models_implement_the_protocols(service: RetrievalService) -> None:
    embedder, reranker = service.embedder(), service.models.reranker("fake-reranker")
    assert isinstance(embedder, Embedder) and isinstance(reranker, Reranker)
    assert embedder.embed_queries(["tea"]).shape == (1, embedder.dimension)
    assert reranker.score_pairs([("tea", "tea hills"), ("cat", "tea")]).tolist() == [1.0, 0.0]


def test_snapshot_reports_loads_batchers_and_caches(service: RetrievalService) -> None:
    before = service.models.snapshot()
    assert {r.name for r in before.loads} >= {"fake-embedder", "fake-reranker"}
    assert before.batchers == ()  # batchers start with their first call
    service.search("c", SearchRequest("tea", rerank=True))
    service.search("c", SearchRequest("tea", rerank=True))
    snap = service.models.snapshot()
    batchers = {b.name: b for b in snap.batchers}
    assert set(batchers) == {"embed-fake-embedder", "rerank-fake-reranker"}
    embed = batchers["embed-fake-embedder"]
    assert embed.batches == embed.items == 1  # the second search hit the query cache
    assert embed.recent_sizes == {0.5: 1.0, 0.95: 1.0, 0.99: 1.0}
    caches = {c.name: c for c in snap.caches}
    assert caches["query_embeddings"].hits == 1 and caches["query_embeddings"].misses == 1


def test_an_unknown_model_is_refused_with_the_valid_names(tmp_path: Path) -> None:
    models = ModelManager.from_settings(make_settings(tmp_path))
    with pytest.raises(Exception, match=r"bge-small-en-v1\.5"):
        models.embedder("no-such-model")


def test_remote_models_are_imported_only_where_a_model_server_is_set(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = f"""
import sys
from ragserve.config import Settings
from ragserve.models.manager import ModelManager
from ragserve.service import RetrievalService
local = ModelManager.from_settings(Settings(model_dir={str(tmp_path)!r}))
print(local.remote is None, "ragserve.models.remote" in sys.modules, "httpx" in sys.modules)
remote = ModelManager.from_settings(
    Settings(model_dir={str(tmp_path)!r}, embedder_url="http://127.0.0.1:9")
)
print(remote.remote is not None and remote.remote.any)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False", "True"]
