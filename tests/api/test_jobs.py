"""Ingest jobs over HTTP: 202 and a job id, progress to the final counts, cancel, sync jobs,
and jobs that a stopped server left behind reported as interrupted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ragserve.config import Settings
from ragserve.jobs import Job, Jobs, JobStore
from tests.fakes import FakeEmbedder, wait_until

from .conftest import error_of, make_service, make_settings, ready_client


class GatedEmbedder(FakeEmbedder):
    """Embeds the first ``free`` batches at once, then each batch only once ``gate`` is set."""

    def __init__(self, free: int = 1) -> None:
        super().__init__(64, "fake-embedder")
        self.gate = threading.Event()
        self.free = free
        self.waiting = threading.Event()

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if self.free > 0:
            self.free -= 1
        else:
            self.waiting.set()
            self.gate.wait(timeout=30)
        return super().embed_documents(texts)


def docs(n: int, prefix: str = "d") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "text": f"document {i} about topic{i % 7}"} for i in range(n)]


def finished(client: TestClient, job_id: str) -> dict[str, Any]:
    def done() -> bool:
        return client.get(f"/v1/jobs/{job_id}").json()["state"] not in ("queued", "running")

    wait_until(done, timeout=30)
    out: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return out


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[TestClient, GatedEmbedder, Settings]]:
    settings = make_settings(tmp_path)
    embedder = GatedEmbedder()
    for client in ready_client(settings, make_service(settings, embedder=embedder)):
        assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
        try:
            yield client, embedder, settings
        finally:
            embedder.gate.set()


def test_a_job_reports_progress_to_the_final_counts(client: TestClient) -> None:
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    body = [*docs(120), {"id": "blank", "text": "   "}]  # more than a request may hold (50)
    r = client.post("/v1/collections/docs/jobs", json={"documents": body})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["total"] == 121 and job["state"] in ("queued", "running", "succeeded")
    out = finished(client, job["id"])
    assert out["state"] == "succeeded" and out["progress"] == 1.0
    assert (out["done"], out["created"], out["failed"]) == (121, 120, 1)
    assert out["errors"] == [{"document": "blank", "error": "document has no text"}]
    assert out["eta_s"] == 0.0 and out["rate_per_s"] > 0
    collection = client.get("/v1/collections/docs").json()
    assert collection["documents"] == out["created"] and collection["chunks"] == out["chunks"]
    again = finished(
        client, client.post("/v1/collections/docs/jobs", json={"documents": body}).json()["id"]
    )
    assert again["unchanged"] == 120 and again["chunks"] == 0
    listed = client.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [again["id"], out["id"]]


def test_uploaded_files_make_a_job_too(client: TestClient) -> None:
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    lines = "\n".join(json.dumps(d) for d in docs(80)).encode()
    r = client.post(
        "/v1/collections/docs/jobs", files=[("files", ("c.jsonl", lines, "application/x-ndjson"))]
    )
    assert r.status_code == 202, r.text
    assert finished(client, r.json()["id"])["created"] == 80


def test_cancel_half_way_leaves_a_consistent_collection(
    gated: tuple[TestClient, GatedEmbedder, Settings],
) -> None:
    client, embedder, _ = gated
    job = client.post("/v1/collections/docs/jobs", json={"documents": docs(400)}).json()
    embedder.waiting.wait(timeout=30)  # the first group is stored, the second waits to embed
    running = client.get(f"/v1/jobs/{job['id']}").json()
    assert running["state"] == "running" and 0 < running["done"] < 400
    assert running["eta_s"] is not None and running["eta_s"] > 0
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202
    embedder.gate.set()
    out = finished(client, job["id"])
    assert out["state"] == "cancelled" and out["done"] < 400
    collection = client.get("/v1/collections/docs").json()
    assert collection["documents"] == out["created"] == out["done"]
    assert collection["chunks"] == out["chunks"]
    for i in range(out["done"]):  # in order: the first `done` documents, each complete
        assert client.get(f"/v1/collections/docs/documents/d{i}").status_code == 200
    assert client.get(f"/v1/collections/docs/documents/d{out['done']}").status_code == 404


def test_a_sync_job_makes_the_source_exactly_its_documents(client: TestClient) -> None:
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    client.post("/v1/collections/docs/documents", json={"documents": [{"id": "mine", "text": "x"}]})
    first = client.post("/v1/collections/docs/jobs", json={"documents": docs(10), "source": "crm"})
    assert finished(client, first.json()["id"])["created"] == 10
    second = client.post(
        "/v1/collections/docs/jobs", json={"documents": docs(4), "source": "crm"}
    ).json()
    out = finished(client, second["id"])
    assert (out["unchanged"], out["deleted"], out["source"]) == (4, 6, "crm")
    assert client.get("/v1/collections/docs").json()["documents"] == 5  # 4 + "mine"


def test_bad_job_requests(client: TestClient) -> None:
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    r = client.post("/v1/collections/nope/jobs", json={"documents": docs(2)})
    assert r.status_code == 404 and error_of(r)["type"] == "collection_not_found"
    r = client.post("/v1/collections/docs/jobs", json={"documents": docs(2), "source": 5})
    assert r.status_code == 422 and "source" in error_of(r)["message"]
    r = client.post("/v1/collections/docs/jobs", json={"documents": []})
    assert r.status_code == 422
    r = client.post(
        "/v1/collections/docs/jobs", content=b"{", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert client.get("/v1/jobs/job-nope").status_code == 404
    assert client.post("/v1/jobs/job-nope/cancel").status_code == 404


def test_too_many_queued_jobs_get_429(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_queued_jobs=2)
    embedder = GatedEmbedder(free=0)
    for client in ready_client(settings, make_service(settings, embedder=embedder)):
        client.post("/v1/collections", json={"name": "docs"})
        try:
            statuses = [
                client.post(
                    "/v1/collections/docs/jobs", json={"documents": docs(2, f"j{i}")}
                ).status_code
                for i in range(4)
            ]  # one running, two queued, one refused
            assert statuses == [202, 202, 202, 429]
        finally:
            embedder.gate.set()


def test_a_job_left_running_by_a_stopped_server_is_interrupted(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job = Job("job-old", "docs", 100, state="running", started_at=time.time())
    job.counts["done"] = 40
    store.save(job, run="a-previous-run")
    store.close()
    jobs = Jobs(tmp_path, lambda: None)
    try:
        found = jobs.get("job-old")
        assert found.state == "interrupted" and found.counts["done"] == 40
        assert "stopped" in (found.error or "")
    finally:
        jobs.close()


def test_shutting_down_interrupts_the_running_job_and_keeps_what_it_stored(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    embedder = GatedEmbedder()
    service = make_service(settings, embedder=embedder)
    job_id = ""
    for client in ready_client(settings, service):
        client.post("/v1/collections", json={"name": "docs"})
        job_id = client.post("/v1/collections/docs/jobs", json={"documents": docs(300)}).json()[
            "id"
        ]
        embedder.waiting.wait(timeout=30)
        threading.Timer(0.2, embedder.gate.set).start()  # lets the shutdown's stop land first
    settings2 = make_settings(tmp_path)
    for client in ready_client(settings2, make_service(settings2)):
        out = client.get(f"/v1/jobs/{job_id}").json()
        assert out["state"] == "interrupted", out
        stored = client.get("/v1/collections/docs").json()["documents"]
        assert 0 < out["done"] <= stored < 300
