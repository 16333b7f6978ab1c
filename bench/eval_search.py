"""SciFact (BEIR) retrieval quality of every search mode.

Run: ``python -m bench.eval_search [--data /work/shared/eval/scifact]``. Prints JSON.
Document vectors are cached under ``bench/out/`` keyed by model + corpus hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import PresetQueries
from ragserve.config import Settings
from ragserve.evaluation import Qrels, beir_scores, load_beir
from ragserve.models.embedder import Embedder
from ragserve.models.manager import ModelManager
from ragserve.models.reranker import Reranker
from ragserve.search import Searcher, SearchRequest
from ragserve.store.sqlite import SqliteStore
from ragserve.types import Chunk, Document

OUT = Path(__file__).parent / "out"
DEFAULT_DATA = Path("/work/shared/eval/scifact")


def corpus_hash(root: Path) -> str:
    return hashlib.sha256((root / "corpus.jsonl").read_bytes()).hexdigest()[:16]


def cached_doc_vectors(embedder: Embedder, root: Path, texts: list[str]) -> npt.NDArray[np.float32]:
    path = OUT / f"docvec-{embedder.name}-{corpus_hash(root)}-{len(texts)}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    started = time.perf_counter()
    parts = []
    step = 256
    for i in range(0, len(texts), step):
        parts.append(embedder.embed_documents(texts[i : i + step]))
        print(
            f"embedded {i + step}/{len(texts)} in {time.perf_counter() - started:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    vectors = np.concatenate(parts).astype(np.float32)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors, allow_pickle=False)
    return vectors


class CachedReranker:
    """Memoizes reranker logits per (query, passage) on disk: sweeps rerun in seconds."""

    def __init__(self, reranker: Reranker, path: Path) -> None:
        self.reranker = reranker
        self.path = path
        self.cache: dict[str, float] = {}
        if path.is_file():
            self.cache = json.loads(path.read_text(encoding="utf-8"))
        self.calls = 0

    @staticmethod
    def key(query: str, passage: str) -> str:
        return hashlib.sha1(f"{query}\x00{passage}".encode()).hexdigest()

    @property
    def name(self) -> str:
        return self.reranker.name

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float32]:
        keys = [self.key(q, p) for q, p in pairs]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            self.calls += 1
            logits = self.reranker.score_pairs([pairs[i] for i in missing])
            for i, logit in zip(missing, logits.tolist(), strict=True):
                self.cache[keys[i]] = float(logit)
            if self.calls % 20 == 0:
                self.save()
        return np.asarray([self.cache[k] for k in keys], dtype=np.float32)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.cache), encoding="utf-8")
        tmp.replace(self.path)


def evaluate(
    searcher: Searcher,
    queries: dict[str, str],
    qvec: dict[str, npt.NDArray[np.float32]],
    qrels: Qrels,
    request: SearchRequest,
    rerank: CachedReranker | None = None,
) -> dict[str, float]:
    run: dict[str, list[str]] = {}
    for qid, text in queries.items():
        result = searcher.search(
            "scifact",
            replace(request, query=text),
            embedder=PresetQueries(qvec),
            reranker=rerank,
        )
        run[qid] = [h.document_id for h in result.hits]
    return beir_scores(run, qrels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--embed-only", action="store_true")
    parser.add_argument("--no-rerank", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="also sweep rerank fusion settings")
    parser.add_argument("--rerank-max-length", type=int, default=None, help="tokens per pair")
    args = parser.parse_args()
    settings = Settings()
    if args.rerank_max_length:
        settings = settings.model_copy(update={"rerank_max_length": args.rerank_max_length})
    ds = load_beir(args.data)
    docs = list(ds.corpus())
    texts = [f"{title} {text}".strip() for _, title, text in docs]
    manager = ModelManager.from_settings(settings)
    embedder = manager.embedder(settings.embedder)
    vectors = cached_doc_vectors(embedder, args.data, texts)
    if args.embed_only:
        print(json.dumps({"docs": len(texts), "shape": list(vectors.shape)}))
        return
    queries = ds.test_queries
    qmatrix = embedder.embed_queries(list(queries.values()))
    qvec = dict(zip(queries.values(), qmatrix, strict=True))
    out: dict[str, Any] = {
        "dataset": str(args.data),
        "queries": len(queries),
        "documents": len(docs),
        "embedder": embedder.name,
        "reranker": settings.reranker,
        "rerank_max_length": settings.rerank_max_length,
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp), exact_search_below=settings.exact_search_below)
        store.create_collection("scifact", embedder.name, embedder.dimension)
        t = time.perf_counter()
        for i, (doc_id, title, _text) in enumerate(docs):
            full = texts[i]
            store.upsert_document(
                "scifact",
                Document(id=doc_id, text=full, title=title),
                hashlib.sha256(full.encode()).hexdigest(),
                [Chunk(doc_id, 0, full, 0, len(full))],
                vectors[i : i + 1],
            )
        out["index_s"] = round(time.perf_counter() - t, 1)
        searcher = Searcher(store)
        base = SearchRequest(query="", top_k=100)
        table: dict[str, dict[str, float]] = {}
        for mode in ("lexical", "dense", "hybrid"):
            table[mode] = evaluate(searcher, queries, qvec, ds.qrels, replace(base, mode=mode))
            print(json.dumps({mode: table[mode]}), file=sys.stderr, flush=True)
        if not args.no_rerank:
            name = (
                f"rerank-{settings.reranker}-{settings.rerank_max_length}-{corpus_hash(args.data)}"
            )
            cache_path = OUT / f"{name}.json"
            reranker = CachedReranker(manager.reranker(settings.reranker), cache_path)
            variants: dict[str, SearchRequest] = {
                "hybrid+rerank": replace(base, mode="hybrid", rerank=True),
                "dense+rerank": replace(base, mode="dense", rerank=True),
                "hybrid+rerank (reranker order only)": replace(
                    base, mode="hybrid", rerank=True, rerank_retrieval_weight=0.0
                ),
                "dense+rerank (reranker order only)": replace(
                    base, mode="dense", rerank=True, rerank_retrieval_weight=0.0
                ),
            }
            for name, req in variants.items():
                table[name] = evaluate(searcher, queries, qvec, ds.qrels, req, reranker)
                reranker.save()
                print(json.dumps({name: table[name]}), file=sys.stderr, flush=True)
            if args.sweep:
                sweep = {}
                for top_n in (20, 30):
                    for w in (0.5, 1.0, 1.5, 2.0):
                        for c in (0, 5, 10, 30, 60):
                            req = replace(
                                base,
                                mode="hybrid",
                                rerank=True,
                                rerank_top_n=top_n,
                                rerank_weight=w,
                                rerank_rrf_k=c,
                            )
                            r = evaluate(searcher, queries, qvec, ds.qrels, req, reranker)
                            sweep[f"top_n={top_n} w={w} c={c}"] = r["ndcg@10"]
                            reranker.save()
                out["rerank_sweep_ndcg@10"] = sweep
        store.close()
    out["results"] = table
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
