"""The embedded store at a million chunks (or any ``--chunks``): build, reopen, search, memory.

Three phases, each its own (bounded) process, on one data directory kept between them::

    flock /tmp/bench.lock python -m bench.scale_bench build --dir /tmp/ragserve-1m [--chunks N]
    flock /tmp/bench.lock python -m bench.scale_bench index --dir /tmp/ragserve-1m
    flock /tmp/bench.lock python -m bench.scale_bench measure --dir /tmp/ragserve-1m

``--ann-vectors int8`` (``index`` and ``measure``) puts int8 vectors in the HNSW index
(``RAGSERVE_ANN_VECTORS``). ``build`` ingests ``--chunks`` chunks (``--chunks-per-doc`` per
document, one transaction per document, vectors given: no model) and commits the lexical index;
``index`` opens the store and builds and saves its dense index (timed); ``measure`` reopens it
(timed, with saved indexes) and prints one JSON object: reopen time, RSS, ANN recall@10 against
exact search, and p50 latencies of dense, lexical and hybrid search, unfiltered and with filters
matching 1 %, 10 % and 50 % of the documents.

Data is synthetic, as in :mod:`bench.store_bench`: chunk texts are pairs of SciFact sentences,
vectors are mixtures of two real bge-small SciFact embeddings plus noise (``--vectors random``:
uniform random unit vectors), generated in batches from fixed seeds so ``measure`` can compute
the exact top 10 again without keeping 1.5 GB of vectors. Document ``d`` has metadata
``{"year": 2000 + d % 25, "group": d % 7, "bucket": d % 100}``: ``bucket < 1`` selects 1 %.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.store_bench import DIM, F32, FixedEmbedder, make_vectors, p50_ms, rss_mb, sentences
from ragserve.service import limit_blas_threads
from ragserve.store.sqlite import SqliteStore
from ragserve.store.sqlite.ann import AnnParams
from ragserve.types import Chunk, Document

BATCH = 50_000
FILTERS = {
    "1%": {"bucket": {"$lt": 1}},
    "10%": {"bucket": {"$lt": 10}},
    "50%": {"bucket": {"$lt": 50}},
}


def vector_batches(n: int, kind: str) -> Iterator[tuple[int, F32]]:
    """(first row, vectors) for rows ``[0, n)`` in batches, the same on every call."""
    for lo in range(0, n, BATCH):
        yield lo, make_vectors(min(BATCH, n - lo), kind, seed=1000 + lo // BATCH)


def build(data: Path, n: int, per_doc: int, kind: str) -> dict[str, Any]:
    texts = sentences(n)
    store = SqliteStore(data, exact_search_below=2**62)  # the dense index is built by `index`
    store.create_collection("bench", "bench", DIM)
    t = time.perf_counter()
    for lo, vectors in vector_batches(n, kind):
        for off in range(0, len(vectors), per_doc):
            d = (lo + off) // per_doc
            meta = {"year": 2000 + d % 25, "group": d % 7, "bucket": d % 100}
            doc = Document(id=f"doc{d}", text="", metadata=meta)
            chunks = [Chunk(doc.id, j, texts[lo + off + j]) for j in range(per_doc)]
            store.upsert_document("bench", doc, f"h{d}", chunks, vectors[off : off + per_doc])
        print(json.dumps({"ingested": lo + len(vectors), "s": round(time.perf_counter() - t)}))
    ingest = time.perf_counter() - t
    t = time.perf_counter()
    store.lexical_search("bench", "protein", 1)  # builds and commits the tantivy index
    lexical = time.perf_counter() - t
    store._keeper.indexes.clear()
    store.close()
    disk = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    return {
        "chunks": n,
        "documents": n // per_doc,
        "ingest_s": round(ingest, 1),
        "lexical_index_s": round(lexical, 1),
        "disk_mb": round(disk / 2**20),
    }


def open_store(data: Path, vectors: str) -> SqliteStore:
    if vectors == "float32":  # the default: also what builds without the setting run
        return SqliteStore(data)
    return SqliteStore(data, ann_params=AnnParams(vectors=vectors))  # type: ignore[arg-type]


def index(data: Path, vectors: str) -> dict[str, Any]:
    rss0 = rss_mb()
    t = time.perf_counter()
    store = open_store(data, vectors)
    store.dense_search("bench", np.ones(DIM, dtype=np.float32), 1)
    took = time.perf_counter() - t
    rss = rss_mb() - rss0
    store.close()
    ann = sum(p.stat().st_size for p in (data / "ann").iterdir())
    return {"index_build_s": round(took, 1), "rss_mb": round(rss), "ann_mb": round(ann / 2**20)}


def measure(data: Path, n_queries: int, kind: str, vectors: str) -> dict[str, Any]:
    from ragserve.search import Searcher, SearchRequest

    rss0 = rss_mb()
    t = time.perf_counter()
    store = open_store(data, vectors)
    queries = make_vectors(n_queries, kind, seed=2)
    store.dense_search("bench", queries[0], 10)
    store.lexical_search("bench", "protein", 10)
    out: dict[str, Any] = {"reopen_s": round(time.perf_counter() - t, 2)}
    out["rss_mb_reopen"] = round(rss_mb() - rss0)
    t = time.perf_counter()
    store.dense_search("bench", queries[0], 10, {"bucket": {"$lt": 10}})
    out["first_filtered_search_s"] = round(time.perf_counter() - t, 2)  # loads the metadata
    info = store.get_collection("bench")
    out["chunks"] = info.chunks
    per_doc = info.chunks // info.documents
    query_texts = [q.split(".")[0][:120] for q in sentences(n_queries * 37)[::37]]

    # Exact top 10 over every vector (generated again, batch by batch).
    best = np.full((n_queries, 10), -2.0, dtype=np.float32)
    best_rows = np.zeros((n_queries, 10), dtype=np.int64)
    for lo, vectors in vector_batches(info.chunks, kind):
        scores = queries @ vectors.T
        both = np.concatenate([best, scores], axis=1)
        rows = np.concatenate(
            [best_rows, np.arange(lo, lo + len(vectors))[None, :].repeat(n_queries, 0)], axis=1
        )
        top = np.argsort(-both, axis=1)[:, :10]
        best = np.take_along_axis(both, top, 1)
        best_rows = np.take_along_axis(rows, top, 1)
    hits = 0
    for i in range(n_queries):
        found = store.dense_search("bench", queries[i], 10)
        ids = {int(h.document_id[3:]) * per_doc + h.chunk_index for h in found}
        hits += len(ids & set(best_rows[i].tolist()))
    out["ann_recall@10"] = round(hits / (10 * n_queries), 4)

    embedder = FixedEmbedder()
    searcher = Searcher(store, embedder)

    def hybrid(i: int, flt: dict[str, Any] | None = None) -> object:
        embedder.vector = queries[i : i + 1]
        request = SearchRequest(query_texts[i], top_k=10, mode="hybrid", filter=flt)
        return searcher.search("bench", request)

    out["dense_p50_ms"] = p50_ms(lambda i: store.dense_search("bench", queries[i], 10), n_queries)
    out["lexical_p50_ms"] = p50_ms(
        lambda i: store.lexical_search("bench", query_texts[i], 10), n_queries
    )
    out["hybrid_p50_ms"] = p50_ms(hybrid, n_queries)
    for name, flt in FILTERS.items():
        out[f"dense_{name}_p50_ms"] = p50_ms(
            lambda i, f=flt: store.dense_search("bench", queries[i], 10, f), n_queries
        )
        out[f"lexical_{name}_p50_ms"] = p50_ms(
            lambda i, f=flt: store.lexical_search("bench", query_texts[i], 10, f), n_queries
        )
        out[f"hybrid_{name}_p50_ms"] = p50_ms(lambda i, f=flt: hybrid(i, f), n_queries)
    out["rss_mb_after_searches"] = round(rss_mb() - rss0)
    out["rss_mb_process"] = round(rss_mb())
    store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=("build", "index", "measure"))
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--chunks-per-doc", type=int, default=20)
    parser.add_argument("--vectors", choices=("mixture", "random"), default="mixture")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--ann-vectors", choices=("float32", "int8"), default="float32")
    args = parser.parse_args()
    limit_blas_threads(1)  # as a server does (RAGSERVE_BLAS_THREADS=1)
    if args.phase == "build":
        result = build(args.dir, args.chunks, args.chunks_per_doc, args.vectors)
    elif args.phase == "index":
        result = index(args.dir, args.ann_vectors)
    else:
        result = measure(args.dir, args.queries, args.vectors, args.ann_vectors)
    result["ann_vectors"] = args.ann_vectors
    result["median_of"] = "3 rounds of the per-query median" if args.phase == "measure" else ""
    print(json.dumps(result))


if __name__ == "__main__":
    main()
