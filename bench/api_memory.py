"""Where an api process's memory goes: the service of ``--role api`` in this process, SciFact.

    python -m bench.api_memory [--docs N] [--setting NAME=VALUE ...] [--server]

The service (no HTTP server: a ``serve`` process holds ~20 MB more, FastAPI's app and uvicorn)
with its embedder remote, answered by an ``httpx.MockTransport`` with hash-seeded unit vectors
(so the model's cost is not measured, only what the api side keeps), ingests SciFact in
requests of 64 documents. ``VmRSS`` is read once ready, after the ingest, after an explicit
``malloc_trim`` (what ``ragserve.memory`` does 1 s after the last ingest), after the first
hybrid search (which builds the lexical index) and trimmed again. ``--setting`` passes
``RAGSERVE_*`` settings (e.g. ``ann_vectors=int8``, ``exact_search_below=10000``) to compare.

``--server`` measures a real ``ragserve serve --role api`` process instead (its model server
a stdlib HTTP server in this process that answers ragserve's wire the same way, so an ingest
costs no model time): ``VmRSS`` (and its anonymous and file-backed parts) once ready, right
after SciFact is ingested over HTTP (requests of 64 documents), 3 s later (the trim), and
after hybrid searches (300 at concurrency 1, then ``--c16-requests`` at 16), with their
latency. ``BENCH_SMAPS=FILE`` saves the process's
``/proc/PID/smaps`` after the ingest.
Prints JSON.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import functools
import hashlib
import json
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import (
    free_port,
    loadgen,
    machine,
    ragserve_command,
    rss_mb,
    rss_split_mb,
    scifact_docs,
    scifact_test_queries,
    server,
)
from bench.serve_bench import ingest


def _vector(text: str, dimension: int = 384) -> bytes:
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return (v / np.linalg.norm(v)).astype("<f4").tobytes()


def _answer(path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """What a ``--role models`` ragserve answers on ``path`` (None: not found), with
    hash-seeded unit vectors, zero scores and the tokens of bge-small's own tokenizer."""
    if path == "/v1/embeddings":
        texts = body["input"]
        data = [
            {"index": i, "embedding": base64.b64encode(_vector(t)).decode()}
            for i, t in enumerate(texts)
        ]
        n = sum(len(t) // 4 for t in texts)
        return {"data": data, "model": body.get("model"),
                "usage": {"prompt_tokens": n, "total_tokens": n}}  # fmt: skip
    if path == "/v1/tokenize":  # the real route's wire format (api.schemas)
        from ragserve.api.schemas import TokenizeOut
        from ragserve.models.embedder import token_spans

        spans = [token_spans(_tokenizer(), text) for text in body["input"]]
        return TokenizeOut.of(body.get("model") or "bge-small-en-v1.5", spans).model_dump()
    if path == "/v1/rerank":
        return {"results": [{"index": i, "logit": 0.0, "relevance_score": 0.5}
                            for i in range(len(body["documents"]))]}  # fmt: skip
    return None


@functools.cache
def _tokenizer() -> Any:
    from ragserve.config import Settings
    from ragserve.models.runtime import load_tokenizer

    return load_tokenizer(Settings().model_dir / "bge-small-en-v1.5" / "tokenizer.json")


def _mock(request: httpx.Request) -> httpx.Response:
    """:func:`_answer` as an ``httpx.MockTransport`` handler."""
    out = _answer(request.url.path, json.loads(request.content))
    return httpx.Response(404) if out is None else httpx.Response(200, json=out)


class _FakeModels(BaseHTTPRequestHandler):
    """ragserve's model wire (``--role models``) over HTTP: :func:`_answer`."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed ACK

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        out = _answer(self.path, body)
        if out is None:
            self.send_error(404)
            return
        raw = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def measure_server(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """A real ``ragserve serve --role api`` process, its models on :class:`_FakeModels`."""
    _tokenizer()
    models = ThreadingHTTPServer(("127.0.0.1", 0), _FakeModels)
    threading.Thread(target=models.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{models.server_address[1]}"
    settings = {f"RAGSERVE_{k.upper()}": v for k, v in (s.split("=", 1) for s in args.setting)}
    with tempfile.TemporaryDirectory(prefix="ragserve-memory-") as tmp:
        port = free_port()
        env = {"PORT": str(port), "RAGSERVE_DATA_DIR": str(Path(tmp) / "data"),
               "RAGSERVE_EMBEDDER_URL": url, "RAGSERVE_RERANKER_URL": url,
               "RAGSERVE_QUERY_CACHE_SIZE": "0", "HF_HUB_OFFLINE": "1", **settings}  # fmt: skip
        if args.src:  # another build's ragserve (e.g. `git archive main`) serves
            env["PYTHONPATH"] = str(Path(args.src).resolve())
        command = [*ragserve_command(port), "--role", "api"]
        if args.python:  # another install's interpreter (e.g. a venv of `make install` only)
            command[0] = args.python
        with server(command, env) as api:
            time.sleep(1)
            out["ready_mb"] = round(api.rss_mb(), 1)
            out["ready_parts_mb"] = rss_split_mb(api.proc.pid)
            out["ingest"] = ingest(api.url, scifact_docs(args.docs))
            out["right_after_ingest_mb"] = round(api.rss_mb(), 1)
            time.sleep(3)  # ragserve.memory trims 1 s after the last ingest request
            out["after_ingest_mb"] = round(api.rss_mb(), 1)
            out["after_ingest_parts_mb"] = rss_split_mb(api.proc.pid)
            if os.environ.get("BENCH_SMAPS"):  # where it is, by mapping (investigation aid)
                Path(os.environ["BENCH_SMAPS"]).write_text(
                    Path(f"/proc/{api.proc.pid}/smaps").read_text()
                )
            bodies = [{"query": q, "top_k": 10, "mode": "hybrid"} for q in scifact_test_queries()]
            endpoint = f"{api.url}/v1/collections/scifact/search"
            loadgen(endpoint, bodies[:20], concurrency=2, requests=20, seconds=60)  # warm-up
            out["c1"] = loadgen(endpoint, bodies, concurrency=1, requests=300, seconds=120)
            out["c16"] = loadgen(
                endpoint, bodies, concurrency=16, requests=args.c16_requests, seconds=120
            )
            out["after_searches_mb"] = round(api.rss_mb(), 1)
    models.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=None, help="first N SciFact documents")
    parser.add_argument("--setting", action="append", default=[], help="NAME=VALUE")
    parser.add_argument("--server", action="store_true", help="a real `serve --role api`")
    parser.add_argument("--src", help="--server: the src/ directory of the build to run")
    parser.add_argument("--python", help="--server: the interpreter that runs the api process")
    parser.add_argument("--c16-requests", type=int, default=1000, help="--server")
    args = parser.parse_args()
    if args.server:
        out: dict[str, Any] = {
            "machine": machine(),
            "command": "python -m bench.api_memory --server"
            + "".join(f" --setting {s}" for s in args.setting)
            + (f" --src {args.src}" if args.src else "")
            + (f" --python {args.python}" if args.python else ""),
            "load_average_start": os.getloadavg()[0],
        }
        measure_server(args, out)
        out["load_average_end"] = os.getloadavg()[0]
        print(json.dumps(out, indent=2))
        return
    for item in args.setting:
        name, value = item.split("=", 1)
        os.environ[f"RAGSERVE_{name.upper()}"] = value

    from ragserve.config import Settings
    from ragserve.search import SearchRequest
    from ragserve.service import RetrievalService, limit_malloc_arenas
    from ragserve.types import Document

    limit_malloc_arenas()  # as `ragserve serve` does
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    pid = os.getpid()
    out = {
        "machine": machine(),
        "command": "python -m bench.api_memory" + "".join(f" --setting {s}" for s in args.setting),
        "load_average_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="ragserve-memory-") as tmp:
        settings = Settings(
            role="api",
            embedder_url="http://models.invalid",
            reranker_url="http://models.invalid",
            reranker_load="off",
            data_dir=Path(tmp) / "data",
        )
        service = RetrievalService.open(settings, load_models=False)
        remote = service.models.remote
        assert remote is not None
        remote._transport = httpx.MockTransport(_mock)  # before the first client
        service.load_models()
        out["ready_mb"] = round(rss_mb(pid), 1)
        service.create_collection("scifact")
        docs = scifact_docs(args.docs)
        for i in range(0, len(docs), 64):
            batch = [Document(id=d["id"], text=d["text"]) for d in docs[i : i + 64]]
            service.ingest("scifact", batch)
        out["chunks"] = service.store.get_collection("scifact").chunks
        if out["chunks"] == 0:
            raise SystemExit("the ingest stored nothing: see the log")
        del docs
        out["after_ingest_mb"] = round(rss_mb(pid), 1)
        trim(0)
        out["after_ingest_trimmed_mb"] = round(rss_mb(pid), 1)
        service.search("scifact", SearchRequest(query="cancer cells", mode="hybrid"))
        out["after_first_hybrid_mb"] = round(rss_mb(pid), 1)
        trim(0)
        out["after_first_hybrid_trimmed_mb"] = round(rss_mb(pid), 1)
        service.close()
    out["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
