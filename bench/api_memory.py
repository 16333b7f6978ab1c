"""Where an api process's memory goes: the service of ``--role api`` in this process, SciFact.

    python -m bench.api_memory [--docs N] [--setting NAME=VALUE ...]

The service (no HTTP server: a ``serve`` process holds ~20 MB more, FastAPI's app and uvicorn)
with its embedder remote, answered by an ``httpx.MockTransport`` with hash-seeded unit vectors
(so the model's cost is not measured, only what the api side keeps), ingests SciFact in
requests of 64 documents. ``VmRSS`` is read once ready, after the ingest, after an explicit
``malloc_trim`` (what ``ragserve.memory`` does 1 s after the last ingest), after the first
hybrid search (which builds the lexical index) and trimmed again. ``--setting`` passes
``RAGSERVE_*`` settings (e.g. ``ann_vectors=int8``, ``exact_search_below=10000``) to compare.
Prints JSON.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import machine, rss_mb, scifact_docs


def _vector(text: str, dimension: int = 384) -> bytes:
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return (v / np.linalg.norm(v)).astype("<f4").tobytes()


def _embeddings(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    data = [
        {"index": i, "embedding": base64.b64encode(_vector(t)).decode()}
        for i, t in enumerate(body["input"])
    ]
    return httpx.Response(200, json={"data": data, "model": body.get("model")})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=None, help="first N SciFact documents")
    parser.add_argument("--setting", action="append", default=[], help="NAME=VALUE")
    args = parser.parse_args()
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
    out: dict[str, Any] = {
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
        remote._transport = httpx.MockTransport(_embeddings)  # before the first client
        service.load_models()
        out["ready_mb"] = round(rss_mb(pid), 1)
        service.create_collection("scifact")
        docs = scifact_docs(args.docs)
        for i in range(0, len(docs), 64):
            batch = [Document(id=d["id"], text=d["text"]) for d in docs[i : i + 64]]
            service.ingest("scifact", batch)
        out["chunks"] = service.store.get_collection("scifact").chunks
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
