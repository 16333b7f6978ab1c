"""Embedded store at 100,000 chunks x 384 dimensions: latency, ANN recall, memory, build time.

Run: ``python -m bench.store_bench`` (store figures) or
``python -m bench.store_bench --compare-libraries`` (usearch vs hnswlib vs faiss, same vectors).
Prints JSON. Chunk texts are sentences of the SciFact corpus (read from
``/work/shared/eval/scifact``, never copied). Vectors: ``--vectors mixture`` (default) draws each
as a random mixture of two real bge-small SciFact document embeddings plus noise (real
embeddings' low intrinsic dimension; needs ``python -m bench.eval_search --embed-only`` once),
``--vectors random`` uses uniform random unit vectors (the hardest case for any ANN graph).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ragserve.store.sqlite import SqliteStore
from ragserve.types import Chunk, Document

DATA = Path("/work/shared/eval/scifact")
OUT = Path(__file__).parent / "out"
DIM = 384
F32 = npt.NDArray[np.float32]


def unit(x: F32) -> F32:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=-1, keepdims=True), dtype=np.float32)


def sentences(limit: int) -> list[str]:
    out: list[str] = []
    with (DATA / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            for s in re.split(r"(?<=[.!?])\s+", f"{rec['title']}. {rec['text']}"):
                if len(s) > 30:
                    out.append(s)
    # Two sentences per chunk (a realistic ~60-token chunk), pairs chosen deterministically.
    n = len(out)
    return [f"{out[i % n]} {out[(i * 7919 + 13) % n]}" for i in range(limit)]


def make_vectors(n: int, kind: str, seed: int) -> F32:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return unit(rng.standard_normal((n, DIM)).astype(np.float32))
    cached = sorted(OUT.glob("docvec-bge-small-en-v1.5-*.npy"))
    if not cached:
        raise SystemExit(
            "run `python -m bench.eval_search --embed-only` first, or --vectors random"
        )
    base = np.load(cached[0], allow_pickle=False)
    a = base[rng.integers(0, len(base), n)]
    b = base[rng.integers(0, len(base), n)]
    w = rng.uniform(0.5, 1.0, (n, 1)).astype(np.float32)
    noise = rng.standard_normal((n, DIM)).astype(np.float32) * 0.02
    return unit(w * a + (1 - w) * b + noise)


def exact_topk(matrix: F32, queries: F32, k: int) -> npt.NDArray[np.int64]:
    scores = queries @ matrix.T
    return np.argsort(-scores, axis=1)[:, :k]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def p50_ms(fn: Callable[[int], object], n: int, rounds: int = 3) -> float:
    """Median over ``rounds`` of the per-query median latency."""
    medians = []
    for _ in range(rounds):
        times = []
        for i in range(n):
            t = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t) * 1000)
        medians.append(statistics.median(times))
    return round(statistics.median(medians), 3)


# --------------------------------------------------------------------------- library comparison


def build_library(
    name: str, m: int, vectors: F32
) -> tuple[Callable[[int], None], Callable[[F32, int], npt.NDArray[np.int64]]]:
    """Build one HNSW (2 threads); return (set_ef, search one query)."""
    import faiss
    import hnswlib
    from usearch.index import Index

    n = len(vectors)
    if name == "usearch":
        u = Index(ndim=DIM, metric="ip", dtype="f32", connectivity=m, expansion_add=128)
        u.add(np.arange(n, dtype=np.uint64), vectors, threads=2)

        def set_u(ef: int) -> None:
            u.expansion_search = ef

        return set_u, lambda q, k: np.asarray(u.search(q, k).keys, dtype=np.int64)
    if name == "hnswlib":
        h = hnswlib.Index(space="ip", dim=DIM)
        h.init_index(max_elements=n, ef_construction=128, M=m)
        h.set_num_threads(2)
        h.add_items(vectors, np.arange(n))
        h.set_num_threads(1)
        return h.set_ef, lambda q, k: np.asarray(h.knn_query(q[None], k)[0][0], dtype=np.int64)
    faiss.omp_set_num_threads(2)
    f = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
    f.hnsw.efConstruction = 128
    f.add(vectors)
    faiss.omp_set_num_threads(1)

    def set_f(ef: int) -> None:
        f.hnsw.efSearch = ef

    return set_f, lambda q, k: np.asarray(f.search(q[None], k)[1][0], dtype=np.int64)


def compare_libraries(vectors: F32, queries: F32, k: int = 10) -> dict[str, Any]:
    truth = exact_topk(vectors, queries, k)
    results: dict[str, Any] = {}
    for m in (16,):
        for name in ("usearch", "hnswlib", "faiss"):
            t = time.perf_counter()
            set_ef, one = build_library(name, m, vectors)
            build = round(time.perf_counter() - t, 1)
            for ef in (64, 96, 128, 256):  # ef_search (usearch: expansion_search)
                set_ef(ef)
                found = [one(q, k) for q in queries]
                hits = sum(
                    len(set(f.tolist()) & set(t.tolist()))
                    for f, t in zip(found, truth, strict=True)
                )
                key = f"{name} M={m} ef={ef}"
                results[key] = {
                    "build_s": build,
                    "query_p50_ms": p50_ms(lambda i, one=one: one(queries[i], k), len(queries)),
                    "recall@10": round(hits / (len(queries) * k), 4),
                }
                print(json.dumps({key: results[key]}), flush=True)
    return results


# --------------------------------------------------------------------------- store benchmark


class FixedEmbedder:
    """Returns a preset query vector: search timings then exclude query embedding."""

    name = "bench"
    dimension = DIM

    def __init__(self) -> None:
        self.vector = np.zeros((1, DIM), dtype=np.float32)

    def embed_documents(self, texts: list[str]) -> F32:
        return np.zeros((len(texts), DIM), dtype=np.float32)

    def embed_queries(self, texts: list[str]) -> F32:
        return self.vector

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return []


def store_bench(n: int, kind: str, per_doc: int, n_queries: int) -> dict[str, Any]:
    from ragserve.search import Searcher, SearchRequest

    texts = sentences(n)
    vectors = make_vectors(n, kind, seed=1)
    queries = make_vectors(n_queries, kind, seed=2)
    query_texts = [t.split(".")[0][:120] for t in sentences(n_queries * 37)[::37]]
    rss0 = rss_mb()
    out: dict[str, Any] = {"chunks": n, "dimension": DIM, "vectors": kind}
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp), exact_search_below=20_000)
        store.create_collection("bench", "bench", DIM)
        t = time.perf_counter()
        for d in range(n // per_doc):
            doc = Document(id=f"doc{d}", text="", metadata={"year": 2000 + d % 25, "group": d % 7})
            lo = d * per_doc
            chunks = [Chunk(doc.id, j, texts[lo + j]) for j in range(per_doc)]
            store.upsert_document("bench", doc, f"h{d}", chunks, vectors[lo : lo + per_doc])
        out["ingest_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        store.flush()
        out["save_index_s"] = round(time.perf_counter() - t, 2)
        db_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        out["disk_mb"] = round(db_bytes / 2**20, 1)
        out["rss_mb_after_ingest"] = round(rss_mb() - rss0, 1)

        truth = exact_topk(vectors, queries, 10)
        hits = 0
        for i in range(n_queries):
            found = store.dense_search("bench", queries[i], 10)
            ids = {int(h.document_id[3:]) * per_doc + h.chunk_index for h in found}
            hits += len(ids & set(truth[i].tolist()))
        out["ann_recall@10"] = round(hits / (10 * n_queries), 4)
        out["dense_p50_ms"] = p50_ms(
            lambda i: store.dense_search("bench", queries[i], 10), n_queries
        )
        out["lexical_p50_ms"] = p50_ms(
            lambda i: store.lexical_search("bench", query_texts[i], 10), n_queries
        )
        out["dense_filtered_p50_ms"] = p50_ms(
            lambda i: store.dense_search("bench", queries[i], 10, {"year": {"$gte": 2020}}),
            n_queries,
        )
        embedder = FixedEmbedder()
        searcher = Searcher(store, embedder)

        def hybrid(i: int) -> object:
            embedder.vector = queries[i : i + 1]
            return searcher.search("bench", SearchRequest(query_texts[i], top_k=10, mode="hybrid"))

        out["hybrid_p50_ms"] = p50_ms(hybrid, n_queries)
        # The same data searched through FTS5 itself (RAGSERVE_LEXICAL_INDEX=fts5), same run.
        store.lexical_index = "fts5"
        out["lexical_fts5_p50_ms"] = p50_ms(
            lambda i: store.lexical_search("bench", query_texts[i], 10), n_queries
        )
        out["hybrid_fts5_p50_ms"] = p50_ms(hybrid, n_queries)
        store.lexical_index = "tantivy"
        out["lexical_filtered_p50_ms"] = p50_ms(
            lambda i: store.lexical_search("bench", query_texts[i], 10, {"year": {"$gte": 2020}}),
            n_queries,
        )
        out["rss_mb_store"] = round(rss_mb() - rss0, 1)
        store.close()
        t = time.perf_counter()
        store = SqliteStore(Path(tmp), exact_search_below=20_000)
        store.dense_search("bench", queries[0], 10)
        out["reopen_saved_index_s"] = round(time.perf_counter() - t, 2)
        store.close()
        for p in (Path(tmp) / "ann").iterdir():
            p.unlink()
        t = time.perf_counter()
        store = SqliteStore(Path(tmp), exact_search_below=20_000)
        store.dense_search("bench", queries[0], 10)
        out["reopen_rebuild_index_s"] = round(time.perf_counter() - t, 1)
        store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--vectors", choices=("mixture", "random"), default="mixture")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunks-per-doc", type=int, default=10)
    parser.add_argument("--compare-libraries", action="store_true")
    args = parser.parse_args()
    if args.compare_libraries:
        vectors = make_vectors(args.chunks, args.vectors, seed=1)
        queries = make_vectors(args.queries, args.vectors, seed=2)
        result = compare_libraries(vectors, queries)
        print(json.dumps({"chunks": args.chunks, "vectors": args.vectors, "results": result}))
        return
    print(json.dumps(store_bench(args.chunks, args.vectors, args.chunks_per_doc, args.queries)))


if __name__ == "__main__":
    main()
