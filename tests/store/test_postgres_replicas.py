"""Stateless replicas: two real `ragserve serve` processes (real cached models) share one
PostgreSQL; a document written through one is found through the other, and a collection
deleted through one is gone for the other."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.postgres]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def replicas(tmp_path: Path, postgres_dsn: str) -> Iterator[list[str]]:
    procs: list[tuple[subprocess.Popen[bytes], Path, Any]] = []
    urls = []
    try:
        for i in range(2):
            port = _free_port()
            env = {
                **os.environ,
                "RAGSERVE_STORE": "postgres",
                "RAGSERVE_POSTGRES_DSN": postgres_dsn,
                "RAGSERVE_DATA_DIR": str(tmp_path / f"data{i}"),  # unused by the postgres store
                "RAGSERVE_RERANKER_LOAD": "off",
                "HF_HUB_OFFLINE": "1",
            }
            log_path = tmp_path / f"server{i}.log"
            log = log_path.open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "ragserve.cli", "serve", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            procs.append((proc, log_path, log))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 180
        for (proc, log_path, _), url in zip(procs, urls, strict=True):
            while True:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "server never became ready"
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        yield urls
    finally:
        for proc, _, _log in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _, log in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def test_two_replicas_share_one_database(replicas: list[str]) -> None:
    a, b = (httpx.Client(base_url=u, timeout=60) for u in replicas)
    with a, b:
        assert a.post("/v1/collections", json={"name": "kb"}).status_code == 201
        assert b.post("/v1/collections", json={"name": "kb"}).status_code == 201  # idempotent
        doc = {
            "id": "octopus",
            "title": "Octopus",
            "text": "An octopus has three hearts and blue blood. It can change colour to hide.",
            "metadata": {"kind": "animal"},
        }
        r = a.post("/v1/collections/kb/documents", json={"documents": [doc]})
        assert r.json()["results"][0]["status"] == "created"
        other = {"id": "rust", "text": "Rust is a systems language with memory safety."}
        assert b.post("/v1/collections/kb/documents", json={"documents": [other]}).is_success
        for client in (a, b):
            for mode in ("dense", "lexical", "hybrid"):
                hits = client.post(
                    "/v1/collections/kb/search",
                    json={"query": "how many hearts does an octopus have", "mode": mode},
                ).json()["results"]
                assert hits[0]["document_id"] == "octopus", (mode, hits)
            assert client.get("/v1/collections/kb").json()["documents"] == 2
        r = b.post("/v1/collections/kb/documents", json={"documents": [doc]})
        assert r.json()["results"][0]["status"] == "unchanged"  # the hash written through a
        assert b.delete("/v1/collections/kb").status_code == 204
        assert a.get("/v1/collections/kb").status_code == 404
