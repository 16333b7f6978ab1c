"""End to end: a `--role models` ragserve and an `--role api` ragserve as two real processes.

They give what one `--role all` process gives (the same vectors, the same ranking in every
search mode), and when the model server dies or stalls mid-load the API answers only 200s or
503s with JSON bodies, never past the timeout, stores no half document, and recovers by itself
when the model server is back.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TOPICS = [
    ("octopus", "An octopus has three hearts and blue blood. It can change colour to hide."),
    ("rust", "Rust is a systems programming language that guarantees memory safety."),
    ("bread", "Sourdough bread rises thanks to wild yeast and lactic acid bacteria."),
    ("tides", "Tides are caused by the gravitational pull of the moon and the sun."),
    ("bees", "Honey bees communicate the direction of flowers with a waggle dance."),
    ("iron", "Iron rusts when it reacts with oxygen and water to form iron oxide."),
]
DOCS = [
    {"id": name, "title": name.title(), "text": " ".join([text] * (1 + 40 * (i % 2)))}
    for i, (name, text) in enumerate(TOPICS)
]  # every other document is long enough for several chunks
QUERIES = ["how many hearts does an octopus have", "memory safe language", "why does iron rust"]
SEARCHES = [
    {"mode": "dense"},
    {"mode": "lexical"},
    {"mode": "hybrid"},
    {"mode": "hybrid", "rerank": True},
    {"mode": "dense", "rerank": True, "rerank_top_n": 5},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


def start(
    role: str, where: Path, port: int | None = None, *, wait: bool = True, **settings: str
) -> Server:
    """A real `ragserve serve --role ROLE` on loopback; ``settings`` are RAGSERVE_ values."""
    port = port or _free_port()
    where.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RAGSERVE_DATA_DIR": str(where / "data"),
        "RAGSERVE_RERANKER_LOAD": "lazy",
        "HF_HUB_OFFLINE": "1",
        **{f"RAGSERVE_{name.upper()}": value for name, value in settings.items()},
    }
    log = where / f"server-{role}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragserve.cli", "serve", "--role", role, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", port, proc, log)
    if wait:
        try:
            wait_ready(server)
        except BaseException:
            stop(server)
            raise
    return server


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert server.proc.poll() is None, server.log.read_text()
        assert time.monotonic() < deadline, "server never became ready"
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@contextmanager
def running(*servers: Server) -> Iterator[list[Server]]:
    """Stops every server on the way out, those started inside (appended to the list) too."""
    started = list(servers)
    try:
        yield started
    finally:
        for server in started:
            stop(server)


def ingest_and_search(url: str) -> dict[str, Any]:
    """Everything a client sees of one server after the same ingest and searches."""
    seen: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
        r = client.post("/v1/collections/kb/documents", json={"documents": DOCS})
        assert r.status_code == 200, r.text
        seen["ingest"] = r.json()["results"]
        assert {x["status"] for x in seen["ingest"]} == {"created"}
        chunks = sum(x["chunks"] for x in seen["ingest"])
        for query in QUERIES:
            for search in SEARCHES:
                body = {"query": query, "top_k": chunks, **search}
                r = client.post("/v1/collections/kb/search", json=body)
                assert r.status_code == 200, r.text
                hits = [(h["chunk_id"], h["score"], h["rank"]) for h in r.json()["results"]]
                seen[f"{query} {search}"] = hits
        for input_type in ("query", "document"):
            r = client.post(
                "/v1/embeddings",
                json={"input": QUERIES, "input_type": input_type, "encoding_format": "base64"},
            )
            assert r.status_code == 200, r.text
            seen[f"embeddings {input_type}"] = [d["embedding"] for d in r.json()["data"]]
        r = client.post(
            "/v1/rerank", json={"query": QUERIES[0], "documents": [t for _, t in TOPICS]}
        )
        assert r.status_code == 200, r.text
        seen["rerank"] = [(x["index"], x["logit"]) for x in r.json()["results"]]
    return seen


def test_models_and_api_processes_give_what_one_process_gives(tmp_path: Path) -> None:
    models = start("models", tmp_path / "models", reranker_load="eager")
    remote = {
        "embedder_url": models.url,
        "reranker_url": models.url,
        "embedder_timeout": "60",  # a loaded 2-core machine: this test is about results
        "reranker_timeout": "60",
        "request_deadline": "120",
    }
    with running(models):
        with httpx.Client(base_url=models.url, timeout=30) as client:
            assert client.get("/v1/collections").status_code == 404  # no store, no such routes
            assert client.get("/metrics").status_code == 200
        api = start("api", tmp_path / "api", **remote)
        with running(api):
            split = ingest_and_search(api.url)
            ready = httpx.get(api.url + "/readyz").json()
            assert "bge-small-en-v1.5" in ready["models"]
            mapped = Path(f"/proc/{api.proc.pid}/maps").read_text()
            assert "onnxruntime" not in mapped  # the api process runs no model itself
        served = httpx.get(models.url + "/metrics").text  # the api process called it
        for route in ("/v1/embeddings", "/v1/rerank"):
            assert f'route="{route}",status="200"' in served, route
        data = tmp_path / "models" / "data"  # no store, no control database: nothing written
        assert not data.exists() or not any(data.iterdir()), list(data.iterdir())
    single = start("all", tmp_path / "all", request_deadline="120")
    with running(single):
        alone = ingest_and_search(single.url)
    assert split.keys() == alone.keys()
    for key in alone:  # same chunks, same scores (so the same vectors), same ranks
        assert split[key] == alone[key], key
    assert any(len(hits) > 3 for hits in alone.values())


# ------------------------------------------------------------------------------ faults


@dataclass
class Outcome:
    kind: str
    status: int
    seconds: float
    body: Any


def _load(url: str, stop_at: threading.Event, out: list[Outcome], worker: int) -> None:
    """One client thread: searches of every mode and small ingests, until told to stop."""
    n = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop_at.is_set():
            n += 1
            if n % 4 == 0:
                kind = "ingest"
                docs = [
                    {"id": f"w{worker}-{n}-{i}", "text": f"{TOPICS[i][1]} Worker {worker} {n}."}
                    for i in range(3)
                ]
                started = time.monotonic()
                r = client.post("/v1/collections/kb/documents", json={"documents": docs})
            else:
                kind = ("lexical", "hybrid", "dense")[n % 4 - 1]
                started = time.monotonic()
                r = client.post(
                    "/v1/collections/kb/search",
                    json={"query": f"{QUERIES[n % 3]} {worker} {n}", "mode": kind},
                )
            try:
                body = r.json()
            except ValueError:
                body = r.text
            out.append(Outcome(kind, r.status_code, time.monotonic() - started, body))


def test_model_server_killed_or_stalled_mid_load(tmp_path: Path) -> None:
    port = _free_port()
    models = start("models", tmp_path / "models", port)
    timeout = 5.0  # the model calls of a loaded 2-core machine fit in it
    api = start(
        "api",
        tmp_path / "api",
        embedder_url=models.url,
        reranker_url=models.url,
        embedder_timeout=str(timeout),
        reranker_timeout=str(timeout),
        request_deadline="30",
    )
    with running(api, models) as servers:
        with httpx.Client(base_url=api.url, timeout=60) as client:
            assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
            for _ in range(5):  # a loaded machine may take longer than the timeout to embed
                r = client.post("/v1/collections/kb/documents", json={"documents": DOCS})
                if r.status_code == 200:
                    break
                assert r.json()["error"]["type"] == "model_unavailable", r.text
            assert r.status_code == 200, r.text

        for fault in ("kill", "stall"):
            outcomes: list[Outcome] = []
            stop_at = threading.Event()
            workers = [
                threading.Thread(target=_load, args=(api.url, stop_at, outcomes, w))
                for w in range(3)
            ]
            for w in workers:
                w.start()
            time.sleep(1.0)
            if fault == "kill":
                models.proc.send_signal(signal.SIGKILL)
                models.proc.wait()
            else:
                models.proc.send_signal(signal.SIGSTOP)  # alive, listening, never answering
            time.sleep(2 * timeout + 1)
            stop_at.set()
            for w in workers:
                w.join(timeout=60)
            assert not any(w.is_alive() for w in workers), "a request hung"

            failed = [o for o in outcomes if o.status != 200]
            assert failed, f"{fault}: no request needed the model server?"
            for o in outcomes:
                assert o.status in (200, 503), (fault, o)
                if o.status == 503:
                    assert isinstance(o.body, dict), o
                    assert o.body["error"]["type"] == "model_unavailable", o
                    assert o.kind != "lexical", o
                # never past the model timeout (retries included), plus a second of slack for
                # the request's own work on a loaded 2-core machine
                budget = timeout * (4 if o.kind == "ingest" else 1) + 2.0
                assert o.seconds < budget, (fault, o)
            if fault == "kill":
                assert any(o.kind == "ingest" and o.status == 503 for o in outcomes)
            lexical = [o for o in outcomes if o.kind == "lexical"]
            assert lexical and all(o.status == 200 for o in lexical)

            # Nothing half-stored: a failed ingest stored none of its documents, a stored one
            # has every chunk, and re-sending the failed ones stores them once the server is back.
            if fault == "kill":
                models = start("models", tmp_path / "models", port)
                servers.append(models)
            else:
                models.proc.send_signal(signal.SIGCONT)
            recovered = _wait_for_search(api.url, "hybrid", timeout=60)
            assert recovered, "the API did not recover without a restart"
            with httpx.Client(base_url=api.url, timeout=60) as client:
                for o in outcomes:
                    if o.kind != "ingest":
                        continue
                    for result in o.body["results"]:
                        got = client.get(f"/v1/collections/kb/documents/{result['id']}")
                        if result["status"] == "failed":
                            assert got.status_code == 404, result
                        else:
                            assert len(got.json()["chunks"]) == result["chunks"] > 0

    log = (tmp_path / "api" / "server-api.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def _wait_for_search(url: str, mode: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.post(
            url + "/v1/collections/kb/search",
            json={"query": "octopus hearts", "mode": mode},
            timeout=30,
        )
        if r.status_code == 200:
            return True
        assert r.status_code == 503 and r.json()["error"]["type"] == "model_unavailable"
        time.sleep(0.2)
    return False
