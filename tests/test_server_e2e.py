"""End to end: the real `ragserve serve` process, real cached models, real HTTP on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DOCS = [
    {
        "id": "octopus",
        "title": "Octopus",
        "text": "An octopus has three hearts and blue blood. It can change colour to hide.",
    },
    {
        "id": "rust",
        "title": "Rust",
        "text": "Rust is a systems programming language that guarantees memory safety.",
    },
    {
        "id": "bread",
        "title": "Bread",
        "text": "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
    },
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with run_server(tmp_path) as url:
        yield url


@contextmanager
def run_server(tmp_path: Path, **settings: str) -> Iterator[str]:
    """A real `ragserve serve` on an ephemeral loopback port; ``settings`` are RAGSERVE_ values."""
    port = _free_port()
    env = {
        **os.environ,
        "RAGSERVE_DATA_DIR": str(tmp_path / "data"),
        "RAGSERVE_RERANKER_LOAD": "lazy",
        "HF_HUB_OFFLINE": "1",
        **{f"RAGSERVE_{name.upper()}": value for name, value in settings.items()},
    }
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragserve.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "server never became ready"
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            # uvicorn shuts down gracefully, then re-raises the signal it caught.
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
            log.flush()
            assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()


def test_real_server_ingests_and_searches_with_real_models(server: str) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        ready = client.get("/readyz").json()
        assert "bge-small-en-v1.5" in ready["models"]
        assert "ms-marco-MiniLM-L-12-v2" not in ready["models"]  # lazy: not loaded yet

        assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
        r = client.post("/v1/collections/kb/documents", json={"documents": DOCS})
        assert [x["status"] for x in r.json()["results"]] == ["created"] * 3

        for mode in ("dense", "lexical", "hybrid"):
            hits = client.post(
                "/v1/collections/kb/search",
                json={"query": "how many hearts does an octopus have", "mode": mode},
            ).json()["results"]
            assert hits[0]["document_id"] == "octopus", (mode, hits)

        reranked = client.post(
            "/v1/collections/kb/search",
            json={"query": "which language is memory safe", "rerank": True},
        ).json()
        assert reranked["results"][0]["document_id"] == "rust"
        assert reranked["timings_ms"]["rerank"] > 0
        assert "ms-marco-MiniLM-L-12-v2" in client.get("/readyz").json()["models"]

        emb = client.post("/v1/embeddings", json={"input": ["hello", "world"]}).json()
        assert len(emb["data"]) == 2 and len(emb["data"][0]["embedding"]) == 384
