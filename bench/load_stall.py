"""Do searches without rerank keep answering while the lazy reranker loads?

    python -m bench.load_stall [--seconds 6]

In-process, real models from the cache (bge-small + the default reranker, lazy): one thread
searches (hybrid, no rerank, query cache off) in a loop; after a second another thread sends the
first rerank search, which loads the reranker. Prints JSON: the searches' median latency before
the load, the longest one that overlapped the load, how many finished during it, and the load's
own time. With one lock for every model the longest search waits for the whole load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import machine
from ragserve.config import Settings
from ragserve.search import SearchRequest
from ragserve.service import RetrievalService
from ragserve.types import Document

WORDS = ("cell", "protein", "gene", "tumour", "insulin")
WORDS += ("vaccine", "neuron", "enzyme", "virus", "membrane")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ragserve-stall-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            reranker_load="lazy",
            query_cache_size=0,
            rerank_cache_size=0,
        )
        service = RetrievalService.open(settings)
        service.create_collection("c")
        docs = [
            Document(f"d{i}", " ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)))
            for i in range(40)
        ]
        service.ingest("c", docs)
        done = threading.Event()
        searches: list[tuple[float, float]] = []  # (start, end)

        def search_loop() -> None:
            i = 0
            while not done.is_set():
                start = time.perf_counter()
                service.search("c", SearchRequest(query=f"{WORDS[i % 10]} {i}", top_k=5))
                searches.append((start, time.perf_counter()))
                i += 1

        loop = threading.Thread(target=search_loop)
        loop.start()
        time.sleep(1.0)
        load_start = time.perf_counter()
        service.search("c", SearchRequest(query="protein folding", rerank=True))
        load_end = time.perf_counter()
        time.sleep(max(0.0, args.seconds - (load_end - load_start) - 1.0))
        done.set()
        loop.join()
        service.close()
    before = [e - s for s, e in searches if e < load_start]
    during = [e - s for s, e in searches if e > load_start and s < load_end]
    result = {
        "machine": machine(),
        "command": "python -m bench.load_stall",
        "first_rerank_search_s": round(load_end - load_start, 3),
        "search_p50_before_ms": round(1000 * statistics.median(before), 2),
        "searches_overlapping_load": len(during),
        "longest_search_overlapping_load_ms": round(1000 * max(during, default=0.0), 1),
        "median_search_overlapping_load_ms": round(1000 * statistics.median(during), 2)
        if during
        else None,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
