"""ragserve.client against a real `ragserve serve` process (real models, API keys set): every
route, the error classes, uploads with progress, the async client; the retry on 429 against the
real app on uvicorn with a reranker that blocks until the test lets it go."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragserve import errors
from ragserve.client import AsyncClient, Client, Progress, RetryPolicy
from tests.api.test_http_edges import live_server
from tests.fakes import FakeReranker, make_service, make_settings
from tests.test_server_e2e import DOCS, run_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "client-test-key"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_server(tmp_path_factory.mktemp("client"), api_keys=f'["{KEY}"]') as base:
        yield base


@pytest.fixture
def rs(url: str) -> Iterator[Client]:
    with Client(url, api_key=KEY) as client:
        yield client


def test_health_readiness_and_monitoring_routes(rs: Client) -> None:
    assert rs.health().status == "ok"
    ready = rs.ready()
    assert ready.status == "ready" and "bge-small-en-v1.5" in ready.models
    rs.list_collections()
    stats = rs.stats()
    assert stats["ready"] is True and "GET /v1/collections" in stats["routes"]
    assert "ragserve_http_request_duration_seconds" in rs.metrics()


def test_collections_documents_and_search(rs: Client) -> None:
    created = rs.create_collection("kb")
    assert created.name == "kb" and created.embedder == "bge-small-en-v1.5"
    assert rs.create_collection("kb").name == "kb"  # idempotent
    docs: list[dict[str, Any]] = [{**d, "metadata": {"topic": d["id"]}} for d in DOCS]
    docs.append({"id": "dir/odd%2F id?", "text": "Slashes, percent signs and spaces in an id."})
    out = rs.add_documents("kb", docs)
    assert [x.status for x in out.results] == ["created"] * 4
    assert rs.get_collection("kb").documents == 4
    assert "kb" in [c.name for c in rs.list_collections()]
    assert rs.get_collection("kb").fusion is None
    tuned = rs.update_collection("kb", fusion={"method": "zscore", "weights": "auto"})
    assert tuned.fusion is not None and (tuned.fusion.method, tuned.fusion.weights) == (
        "zscore",
        "auto",
    )
    with pytest.raises(errors.InvalidInput):
        rs.update_collection("kb", fusion={"weights": {"dense": 0, "lexical": 0}})
    assert rs.update_collection("kb", fusion=None).fusion is None

    for mode in ("dense", "lexical", "hybrid"):
        hits = rs.search("kb", "how many hearts does an octopus have", mode=mode).results
        assert hits[0].document_id == "octopus", mode
    filtered = rs.search("kb", "octopus hearts", filter={"topic": "bread"}).results
    assert {h.document_id for h in filtered} == {"bread"}
    explained = rs.search("kb", "octopus hearts", explain=True, highlight=True, top_k=1).results[0]
    assert explained.explain is not None and explained.explain.dense is not None
    assert explained.explain.lexical is not None and explained.explain.fused is not None
    passage = (explained.highlights or [])[0]
    assert {passage.text[s:e].lower() for s, e in passage.matches} >= {"octopus", "hearts"}
    reranked = rs.search("kb", "which language is memory safe", rerank=True, top_k=2)
    assert reranked.results[0].document_id == "rust" and reranked.timings_ms["rerank"] > 0

    doc = rs.get_document("kb", "dir/odd%2F id?")
    assert doc.id == "dir/odd%2F id?" and doc.chunks[0].text.startswith("Slashes")
    rs.delete_document("kb", "dir/odd%2F id?")
    with pytest.raises(errors.DocumentNotFound) as caught:
        rs.get_document("kb", "dir/odd%2F id?")
    assert caught.value.status_code == 404 and "odd" in caught.value.message

    rs.delete_collection("kb")
    with pytest.raises(errors.CollectionNotFound):
        rs.get_collection("kb")


def test_models_routes(rs: Client) -> None:
    emb = rs.embeddings(["a cat", "a dog"], input_type="query", dimensions=64)
    assert [len(d.embedding) for d in emb.data] == [64, 64]
    assert emb.model == "bge-small-en-v1.5" and emb.usage.total_tokens > 0
    ranked = rs.rerank("octopus hearts", ["bread rises", "an octopus has three hearts"], top_n=1)
    assert [x.index for x in ranked.results] == [1]


def test_errors_are_the_services_exception_classes(url: str, rs: Client) -> None:
    with pytest.raises(errors.CollectionNotFound) as missing:
        rs.search("nowhere", "query")
    assert missing.value.error_type == "collection_not_found"
    rs.create_collection("errs")
    with pytest.raises(errors.InvalidInput) as invalid:
        rs.search("errs", "query", top_k=0)
    assert invalid.value.status_code == 422 and "top_k" in invalid.value.message
    with pytest.raises(errors.InvalidInput):
        rs.search("errs", "query", no_such_option=True)
    with pytest.raises(errors.UnknownModel):
        rs.create_collection("errs2", embedder="no-such-model")
    with pytest.raises(errors.Conflict):
        rs.create_collection("errs", embedder="e5-small-v2")
    with Client(url) as anonymous, pytest.raises(errors.Unauthorized) as refused:
        anonymous.list_collections()
    assert refused.value.status_code == 401
    with Client(url, api_key="wrong") as wrong, pytest.raises(errors.Unauthorized):
        wrong.search("errs", "query")
    with Client(url) as anonymous:
        assert anonymous.health().status == "ok"  # liveness needs no key


def test_upload_of_files_and_folders_reports_progress(rs: Client, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# Tides\n\nThe moon pulls the oceans into tides.\n")
    (folder / "sub" / "a.md").write_text("# Volcanoes\n\nMagma rises through the crust.\n")
    (folder / ".hidden").write_text("never uploaded")
    single = tmp_path / "glaciers.txt"
    single.write_text("Glaciers carve valleys over thousands of years. " * 200)
    seen: list[Progress] = []
    rs.create_collection("up")
    out = rs.upload("up", folder, single, progress=seen.append, batch_files=2)
    assert sorted(r.id for r in out.results) == ["a.md", "glaciers.txt", "sub/a.md"]
    assert {r.status for r in out.results} == {"created"}
    total = sum(p.stat().st_size for p in (folder / "a.md", folder / "sub/a.md", single))
    assert seen[-1] == Progress(total, total, 3, 3, "glaciers.txt")
    assert [p.files_done for p in seen if p.bytes_sent == total][-1] == 3
    assert any(0 < p.bytes_sent < total for p in seen)  # reported while the bytes went out
    assert rs.search("up", "what carves valleys").results[0].document_id == "glaciers.txt"
    with pytest.raises(errors.InvalidInput):
        rs.upload("up", tmp_path / "missing")


def test_async_client(url: str, tmp_path: Path) -> None:
    (tmp_path / "owls.txt").write_text("Owls hunt at night and can turn their heads far around.")

    async def scenario() -> None:
        async with AsyncClient(url, api_key=KEY) as rs:
            assert (await rs.health()).status == "ok"
            made = await rs.create_collection("async", fusion={"method": "rrf"})
            assert made.fusion is not None and made.fusion.method == "rrf"
            assert (await rs.update_collection("async", fusion=None)).fusion is None
            await rs.add_documents("async", DOCS)
            await rs.upload("async", tmp_path / "owls.txt")
            both = await asyncio.gather(
                rs.search("async", "octopus hearts"), rs.search("async", "night hunting birds")
            )
            assert [b.results[0].document_id for b in both] == ["octopus", "owls.txt"]
            assert (await rs.get_collection("async")).documents == 4
            with pytest.raises(errors.DocumentNotFound):
                await rs.get_document("async", "nope")
            await rs.delete_collection("async")

    asyncio.run(scenario())


class BlockingReranker(FakeReranker):
    """Holds the one rerank slot until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def score_pairs(self, pairs: Any) -> Any:
        self.entered.set()
        assert self.release.wait(30)
        return super().score_pairs(pairs)


def test_429_is_retried_after_what_retry_after_asks(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rerank_workers=1, rerank_queue=0)
    reranker = BlockingReranker()
    waits: list[tuple[int, float, int]] = []

    def on_retry(attempt: int, wait: float, response: httpx.Response) -> None:
        waits.append((attempt, wait, response.status_code))
        assert wait == float(response.headers["retry-after"])
        reranker.release.set()  # the slot frees up while the client waits

    with live_server(settings, make_service(settings, reranker=reranker)) as http:
        url = str(http.base_url)
        with Client(url) as rs:
            rs.create_collection("docs")
            rs.add_documents("docs", [{"id": "a", "text": "common words here"}])
            holder = threading.Thread(
                target=rs.search, args=("docs", "common"), kwargs={"rerank": True}
            )
            holder.start()
            assert reranker.entered.wait(30)
            with Client(url, retry=RetryPolicy(on_retry=on_retry)) as retrying:
                hits = retrying.search("docs", "common words", rerank=True).results
            holder.join(30)
            assert [h.document_id for h in hits] == ["a"]
            assert waits and waits[0][0] == 0 and waits[0][2] == 429

            reranker.release.clear()  # new queries: the rerank cache would answer again
            reranker.entered.clear()
            holder = threading.Thread(
                target=rs.search, args=("docs", "words here"), kwargs={"rerank": True}
            )
            holder.start()
            assert reranker.entered.wait(30)
            try:
                with (
                    Client(url, retry=RetryPolicy(max_retries=0)) as once,
                    pytest.raises(errors.Overloaded) as caught,
                ):
                    once.search("docs", "here", rerank=True)
                assert caught.value.retry_after >= 1 and caught.value.status_code == 429
            finally:
                reranker.release.set()
                holder.join(30)


def test_scoped_keys(url: str, rs: Client) -> None:
    rs.create_collection("scoped")
    rs.add_documents("scoped", DOCS)
    created = rs.create_key("reader", role="read", collections=["scoped"])
    assert created.key and created.role == "read" and created.collections == ["scoped"]
    assert created.id in [k.id for k in rs.list_keys()]
    with Client(url, api_key=created.key) as reader:
        assert reader.search("scoped", "octopus hearts").results[0].document_id == "octopus"
        with pytest.raises(errors.Forbidden) as refused:
            reader.add_documents("scoped", [{"text": "not allowed"}])
        assert refused.value.status_code == 403
        with pytest.raises(errors.Forbidden):
            reader.create_key("escalate", role="admin")
        assert rs.revoke_key(created.id).revoked_at is not None
        with pytest.raises(errors.Unauthorized):
            reader.search("scoped", "octopus hearts")


def test_ingest_jobs(url: str, rs: Client, tmp_path: Path) -> None:
    rs.create_collection("jobs")
    job = rs.create_job("jobs", DOCS, source="seed")
    assert job["state"] in ("queued", "running", "succeeded") and job["total"] == 3
    done = rs.wait_job(job["id"], poll=0.1)
    assert done["state"] == "succeeded" and done["created"] == 3, done
    assert job["id"] in [j["id"] for j in rs.list_jobs()]
    (tmp_path / "owls.txt").write_text("Owls hunt at night.")
    uploaded = rs.wait_job(rs.create_job("jobs", (), tmp_path / "owls.txt")["id"], poll=0.1)
    assert uploaded["state"] == "succeeded" and rs.get_collection("jobs").documents == 4
    with pytest.raises(errors.NotFound):
        rs.get_job("no-such-job")
    with contextlib.suppress(errors.Conflict):  # finished: nothing to stop
        assert rs.cancel_job(done["id"])["state"] == "succeeded"
