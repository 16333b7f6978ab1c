"""Admission control over HTTP: 429 + Retry-After per kind, health never behind model work."""

from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ragserve.api import routes
from tests.api.test_http import _BlockingEmbedder
from tests.fakes import error_of, make_service, make_settings, ready_client, wait_until

DOCS = {"documents": [{"id": "a", "text": "octopus hearts"}, {"id": "b", "text": "rust"}]}


def test_health_routes_never_take_a_worker_thread() -> None:
    assert inspect.iscoroutinefunction(routes.healthz)
    assert inspect.iscoroutinefunction(routes.readyz)


def test_each_kind_has_its_own_bounded_queue_and_health_answers_throughout(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path, search_workers=1, search_queue=1, embeddings_workers=1, request_threads=1
    )
    embedder = _BlockingEmbedder()
    for client in ready_client(settings, make_service(settings, embedder=embedder)):
        assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
        assert client.post("/v1/collections/docs/documents", json=DOCS).status_code == 200
        body = {"query": "octopus", "mode": "dense"}
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(client.post, "/v1/collections/docs/search", json=body)
            assert embedder.entered.wait(10)  # holds the one search slot
            queued = pool.submit(client.post, "/v1/collections/docs/search", json=body)
            gate = client.app.state.admission.gates["search"]  # type: ignore[attr-defined]
            wait_until(lambda g=gate: g.waiting == 1)
            refused = client.post("/v1/collections/docs/search", json=body)
            assert refused.status_code == 429
            assert error_of(refused)["type"] == "overloaded"
            assert int(refused.headers["retry-after"]) >= 1
            # Liveness, readiness and light routes are not behind the search backlog.
            assert client.get("/healthz").json() == {"status": "ok"}
            assert client.get("/readyz").status_code == 200
            assert client.get("/v1/collections/docs").status_code == 200
            embedder.release.set()
            assert running.result(30).status_code == 200
            assert queued.result(30).status_code == 200
        snap = gate.snapshot()
        assert (snap.running, snap.waiting, snap.rejected, snap.admitted) == (0, 0, 1, 2)
        scraped = client.get("/metrics").text
        assert 'ragserve_admission_shed_total{kind="search",reason="refused"} 1.0' in scraped
        assert 'ragserve_admission_admitted_total{kind="search"} 2.0' in scraped
        assert 'ragserve_admission_waiting{kind="rerank"} 0.0' in scraped
        assert 'ragserve_admission_service_seconds{kind="search"}' in scraped


def test_ingest_and_rerank_are_admitted_and_answer_as_before(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ingest_workers=1, rerank_workers=1)
    for client in ready_client(settings, make_service(settings)):
        assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
        assert client.post("/v1/collections/docs/documents", json=DOCS).status_code == 200
        hits = client.post(
            "/v1/collections/docs/search", json={"query": "octopus hearts", "rerank": True}
        ).json()["results"]
        assert hits[0]["document_id"] == "a"
        ranked = client.post(
            "/v1/rerank", json={"query": "rust", "documents": ["octopus", "rust"]}
        ).json()
        assert ranked["results"][0]["index"] == 1 and ranked["meta"]["model"] == "fake-reranker"
        gates = client.app.state.admission.gates  # type: ignore[attr-defined]
        assert gates["ingest"].admitted == 1 and gates["rerank"].admitted == 2
