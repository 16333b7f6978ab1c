"""In-process rerank latency: each reranker scores the hybrid top-N chunks of SciFact queries.

    python -m bench.rerank_speed --data-dir DIR --collection C --dataset BEIR_DIR
        [--queries 50] [--top-n 20] [--rounds 3] [--variant NAME[@MAX_LENGTH][+window] ...]

The candidates are what a search with ``rerank`` hands the reranker: the hybrid head of each
test query (its chunks' texts, cut at the search's ``rerank_max_chars``). Every variant (see
bench/rerank_eval.py for the syntax) scores the same heads through ``OnnxReranker`` with the
settings' threads, no cache; variants run interleaved, query by query, ``--rounds`` times, so a
noisy machine hurts them alike. Prints, per variant, the median and p90 milliseconds of one
head and the ratio to the first variant's median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench.rerank_eval import variant_reranker
from ragserve.config import Settings
from ragserve.evaluation import load_beir
from ragserve.search import SearchRequest
from ragserve.service import RetrievalService


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--top-n", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[])
    args = parser.parse_args()

    data = load_beir(args.dataset)
    settings = Settings(data_dir=args.data_dir, rerank_cache_size=0, query_cache_size=0)
    service = RetrievalService.open(settings, load_models=False)
    try:
        chars = SearchRequest(query="x").rerank_max_chars
        heads = []
        for query in list(data.test_queries.values())[: args.queries]:
            hits = service.search(
                args.collection, SearchRequest(query=query, top_k=args.top_n, mode="hybrid")
            ).hits
            heads.append([(query, h.text[:chars]) for h in hits])
        rerankers = {v: variant_reranker(service, v)[1] for v in args.variant}
        for reranker in rerankers.values():  # warm-up: sessions, allocator
            reranker.score_pairs(heads[0])
        times: dict[str, list[float]] = {v: [] for v in rerankers}
        for _ in range(args.rounds):
            for head in heads:
                for variant, reranker in rerankers.items():
                    started = time.perf_counter()
                    reranker.score_pairs(head)
                    times[variant].append((time.perf_counter() - started) * 1000)
    finally:
        service.close()
    first = None
    for variant, ms in times.items():
        p50 = statistics.median(ms)
        first = first or p50
        print(json.dumps({
            "variant": variant, "heads": len(ms), "pairs_per_head": args.top_n,
            "p50_ms": round(p50, 1), "p90_ms": round(statistics.quantiles(ms, n=10)[-1], 1),
            "vs_first": round(p50 / first, 3), "threads": settings.effective_threads,
            "load": os.getloadavg()[0],
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
