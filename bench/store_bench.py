"""Embedded store at 100,000 chunks x 384 dimensions: latency, ANN recall, memory, build time.

Run: ``python -m bench.store_bench`` (store figures) or
``python -m bench.store_bench --compare-libraries`` (hnswlib vs faiss vs voyager, same vectors;
``--libraries`` picks among the installed ones, usearch too), or
``python -m bench.store_bench --exact-crossover`` (the dense search of a collection, exact scan
against HNSW, at ``--sizes`` chunks: where ``RAGSERVE_EXACT_SEARCH_BELOW`` belongs).
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

#: Libraries ``--compare-libraries`` knows; each is measured only if it is installed. usearch
#: (2.26.6) is left out unless asked for: importing onnxruntime after it kills the process.
LIBRARIES = ("hnswlib", "faiss", "voyager", "usearch")
DEFAULT_LIBRARIES = ("hnswlib", "faiss", "voyager")
MODULES = {"hnswlib": "hnswlib", "faiss": "faiss", "voyager": "voyager", "usearch": "usearch.index"}
EFS = (64, 96, 128, 192, 256)
M, EF_CONSTRUCTION = 16, 128

Search = Callable[[F32, int, int], npt.NDArray[np.int64]]


def installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(MODULES[name].split(".")[0]) is not None


def build_and_save(name: str, vectors: F32, path: Path) -> object:
    """Build one HNSW index (M=16, ef_construction=128, 2 threads) and save it to ``path``;
    returns the index (the caller measures its memory). Keys are ``1000 + row`` (the store's
    keys are SQLite rowids, not positions)."""
    keys = np.arange(len(vectors), dtype=np.int64) + 1000
    if name == "hnswlib":
        import hnswlib

        h = hnswlib.Index(space="ip", dim=DIM)
        h.init_index(max_elements=len(vectors), ef_construction=EF_CONSTRUCTION, M=M)
        h.add_items(vectors, keys.astype(np.uint64), num_threads=2)
        h.save_index(str(path))
        return h
    elif name == "faiss":
        import faiss

        faiss.omp_set_num_threads(2)
        hnsw = faiss.IndexHNSWFlat(DIM, M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = EF_CONSTRUCTION
        f = faiss.IndexIDMap2(hnsw)
        f.add_with_ids(vectors, keys)
        faiss.write_index(f, str(path))
        return f
    elif name == "voyager":
        import voyager

        v = voyager.Index(
            voyager.Space.InnerProduct,
            num_dimensions=DIM,
            M=M,
            ef_construction=EF_CONSTRUCTION,
            max_elements=len(vectors),
        )
        v.add_items(vectors, keys.tolist(), num_threads=2)
        v.save(str(path))
        return v
    else:
        from usearch.index import Index

        u = Index(ndim=DIM, metric="ip", dtype="f32", connectivity=M, expansion_add=128)
        u.add(keys.astype(np.uint64), vectors, threads=2)
        u.save(str(path))
        return u


def load(name: str, path: Path) -> Search:
    """Open a saved index; returns ``search(query, k, ef) -> keys`` (one query, one thread)."""
    if name == "hnswlib":
        import hnswlib

        h = hnswlib.Index(space="ip", dim=DIM)
        h.load_index(str(path))

        def search_h(q: F32, k: int, ef: int) -> npt.NDArray[np.int64]:
            h.set_ef(ef)
            return np.asarray(h.knn_query(q[None], k, num_threads=1)[0][0], dtype=np.int64)

        return search_h
    if name == "faiss":
        import faiss

        faiss.omp_set_num_threads(1)
        f = faiss.read_index(str(path))
        params = {ef: faiss.SearchParametersHNSW(efSearch=ef) for ef in EFS}

        def search_f(q: F32, k: int, ef: int) -> npt.NDArray[np.int64]:
            return np.asarray(f.search(q[None], k, params=params[ef])[1][0], dtype=np.int64)

        return search_f
    if name == "voyager":
        import voyager

        v = voyager.Index.load(str(path))
        return lambda q, k, ef: np.asarray(v.query(q, k, query_ef=ef)[0], dtype=np.int64)
    from usearch.index import Index

    u = Index.restore(str(path))
    assert u is not None

    def search_u(q: F32, k: int, ef: int) -> npt.NDArray[np.int64]:
        u.expansion_search = ef
        return np.asarray(u.search(q, k).keys, dtype=np.int64)

    return search_u


def build_child(name: str, vectors_file: Path, path: Path) -> dict[str, Any]:
    """In a fresh process: build + save one library's index; build time, memory the index
    holds after the build, file size."""
    vectors = np.load(vectors_file, allow_pickle=False)  # one buffer: no freed temporaries
    __import__(MODULES[name])
    rss0 = rss_mb()
    t = time.perf_counter()
    index = build_and_save(name, vectors, path)
    took = time.perf_counter() - t
    rss = rss_mb()
    del index
    return {
        "build_save_s": round(took, 1),
        "rss_build_mb": round(rss - rss0, 1),
        "file_mb": round(path.stat().st_size / 2**20, 1),
    }


def compare_libraries(
    n: int, kind: str, n_queries: int, libraries: list[str], k: int = 10, rounds: int = 3
) -> dict[str, Any]:
    """Every library on the same vectors: each index built and saved in its own process (build
    time and RSS without the others' memory), then all reopened here and queried interleaved
    (round by round, so load on the shared machine hits every library alike)."""
    import subprocess
    import sys

    vectors = make_vectors(n, kind, seed=1)
    queries = make_vectors(n_queries, kind, seed=2)
    truth = exact_topk(vectors, queries, k) + 1000
    per_lib: dict[str, dict[str, Any]] = {}
    searches: dict[str, Search] = {}
    with tempfile.TemporaryDirectory() as tmp:
        vectors_file = Path(tmp) / "vectors.npy"
        np.save(vectors_file, vectors, allow_pickle=False)
        del vectors
        for name in libraries:
            path = Path(tmp) / f"{name}.index"
            cmd = [sys.executable, "-m", "bench.store_bench", "--build-child", name]
            cmd += ["--vectors-file", str(vectors_file), "--out", str(path)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900)
            per_lib[name] = json.loads(done.stdout.strip().splitlines()[-1])
            __import__(MODULES[name])  # import time and memory are not the index's
            rss0 = rss_mb()
            t = time.perf_counter()
            searches[name] = load(name, path)
            per_lib[name]["reopen_s"] = round(time.perf_counter() - t, 3)
            per_lib[name]["rss_reopen_mb"] = round(rss_mb() - rss0, 1)
            print(json.dumps({name: per_lib[name]}), flush=True)
    results: dict[str, Any] = {}
    medians: dict[str, list[float]] = {}
    for name in libraries:
        for ef in EFS:
            found = [searches[name](q, k, ef) for q in queries]
            hits = sum(
                len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)
            )
            results[f"{name} ef={ef}"] = {"recall@10": round(hits / truth.size, 4)}
    for _ in range(rounds):
        for name in libraries:
            for ef in EFS:
                search = searches[name]
                times = []
                for q in queries:
                    t = time.perf_counter()
                    search(q, k, ef)
                    times.append((time.perf_counter() - t) * 1000)
                medians.setdefault(f"{name} ef={ef}", []).append(statistics.median(times))
    for key, values in medians.items():
        results[key]["query_p50_ms"] = round(statistics.median(values), 3)
        print(json.dumps({key: results[key]}), flush=True)
    return {"libraries": per_lib, "searches": results}


# --------------------------------------------------------------------------- store benchmark


class FixedEmbedder:
    """Returns a preset query vector: search timings then exclude query embedding."""

    name = "bench"
    dimension = DIM

    def __init__(self) -> None:
        self.vector = np.zeros((1, DIM), dtype=np.float32)

    def embed_documents(self, texts: list[str]) -> F32:
        return np.zeros((len(texts), DIM), dtype=np.float32)

    def embed_queries(self, texts: list[str], *, instruction: bool = True) -> F32:
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


def exact_crossover(sizes: list[int], kind: str, queries: int, k: int = 100) -> dict[str, Any]:
    """Median ms of one dense search of ``k`` (what hybrid asks for), exact scan against HNSW,
    at each size, as a serving process sees it: one BLAS thread (``RAGSERVE_BLAS_THREADS``) and
    the CPU caches evicted between searches (by a 64 MB read: a request's other work and the
    models run between two searches). ``row-major`` is the scan of a chunk-by-dimension matrix
    (the layout before :class:`ExactIndex` stored columns), for comparison."""
    from threadpoolctl import threadpool_limits

    from ragserve.store.sqlite.ann import AnnParams, ExactIndex, HnswIndex

    evict = np.ones(8 * 2**20)
    out: dict[str, Any] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for n in sizes:
            vectors = make_vectors(n, kind, seed=n)
            qs = unit(make_vectors(queries, kind, seed=n + 1) + 0.05)
            keys = np.arange(n, dtype=np.int64)
            exact, hnsw = ExactIndex(DIM), HnswIndex(DIM, AnnParams())
            for lo in range(0, n, 5_000):
                exact.add(keys[lo : lo + 5_000], vectors[lo : lo + 5_000])
                hnsw.add(keys[lo : lo + 5_000], vectors[lo : lo + 5_000])
            rows = np.ascontiguousarray(vectors)
            runs: dict[str, Callable[[F32], Any]] = {
                "exact": lambda q, exact=exact: exact.search(q, k),
                "hnsw": lambda q, hnsw=hnsw: hnsw.search(q, k),
                "row-major": lambda q, rows=rows: rows @ q,
            }
            times: dict[str, list[float]] = {name: [] for name in runs}
            for q in qs:  # interleaved: the machine's noise falls on all three alike
                for name, run in runs.items():
                    evict.sum()
                    t = time.perf_counter()
                    run(q)
                    times[name].append(time.perf_counter() - t)
            out[str(n)] = {
                f"{name}_ms": round(statistics.median(ts) * 1000, 3) for name, ts in times.items()
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--vectors", choices=("mixture", "random"), default="mixture")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunks-per-doc", type=int, default=10)
    parser.add_argument("--compare-libraries", action="store_true")
    parser.add_argument(
        "--libraries",
        default=",".join(DEFAULT_LIBRARIES),
        help=f"for --compare-libraries, of {', '.join(LIBRARIES)} (installed ones only)",
    )
    parser.add_argument("--exact-crossover", action="store_true")
    parser.add_argument(
        "--sizes", default="2500,5000,10000,15000,20000,30000,50000", help="--exact-crossover"
    )
    parser.add_argument("--build-child", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--vectors-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_child:
        print(json.dumps(build_child(args.build_child, args.vectors_file, args.out)))
        return
    if args.exact_crossover:
        sizes = [int(x) for x in args.sizes.split(",")]
        result = exact_crossover(sizes, args.vectors, args.queries)
        print(json.dumps({"vectors": args.vectors, "queries": args.queries, "ms": result}))
        return
    if args.compare_libraries:
        names = [x for x in args.libraries.split(",") if x]
        unknown = sorted(set(names) - set(LIBRARIES))
        if unknown:
            parser.error(f"unknown libraries {unknown}; known: {', '.join(LIBRARIES)}")
        names = [x for x in names if installed(x)]
        result = compare_libraries(args.chunks, args.vectors, args.queries, names)
        print(json.dumps({"chunks": args.chunks, "vectors": args.vectors, "results": result}))
        return
    print(json.dumps(store_bench(args.chunks, args.vectors, args.chunks_per_doc, args.queries)))


if __name__ == "__main__":
    main()
