"""What explain, highlight and expand cost per search, in process, stage by stage.

    python -m bench.passages_cost --data-dir DIR [--collection eval-scifact] [--queries 300]

Opens DIR (a data directory holding a SciFact collection, e.g. made by ``ragserve eval``) with
the default settings and runs SciFact's test queries as hybrid top-10 searches, each twice in
a row: options off, then explain + highlight + expand (neighbors 1) on. Prints the medians of
the search's own total (off, on, and of the paired difference less the query
embedding, whose time under load swamps the rest), of the highlight and expand
stages, and what picking each dense-only
hit's best sentence by embedding similarity would cost (the hit's sentences embedded in one
embedder call, the query vector reused): the measurement behind not doing it.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import scifact_test_queries
from ragserve.config import Settings
from ragserve.context import ExpandSpec
from ragserve.highlight import HighlightSpec
from ragserve.search import SearchRequest
from ragserve.service import RetrievalService

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--collection", default="eval-scifact")
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    settings = Settings(data_dir=args.data_dir, query_cache_size=0, rerank_cache_size=0)
    service = RetrievalService.open(settings)
    name = service.store.collection_embedder(args.collection)
    queries = scifact_test_queries()[: args.queries]
    figures: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        figures.setdefault(key, []).append(value)

    dense_only = 0
    try:
        for q in queries[:20]:  # warm-up
            service.search(args.collection, SearchRequest(q))
        for q in queries:
            off = service.search(args.collection, SearchRequest(q))
            on = service.search(
                args.collection,
                SearchRequest(
                    q, explain=True, highlight=HighlightSpec(), expand=ExpandSpec(neighbors=1)
                ),
            )
            assert [h.chunk_id for h in on.hits] == [h.chunk_id for h in off.hits]
            add("total_off_ms", off.timings_ms["total"])
            add("total_on_ms", on.timings_ms["total"])
            # Without the query embedding, whose time under load swamps the rest.
            on_ms, off_ms = (r.timings_ms["total"] - r.timings_ms["embed"] for r in (on, off))
            add("added_ms", on_ms - off_ms)
            add("highlight_ms", on.timings_ms["highlight"])
            add("expand_ms", on.timings_ms["expand"])
            # Best sentence by embedding similarity, for the hits BM25 did not find.
            vector = service.embed_queries([q], name)[0]
            started = time.perf_counter()
            for hit in on.hits:
                if "lexical" in hit.scores:
                    continue
                dense_only += 1
                sentences = [s for s in _SENTENCE.split(hit.text) if s.strip()]
                vectors = service.embed_documents(sentences, name)
                int(np.argmax(vectors @ vector))
            add("semantic_sentence_ms", (time.perf_counter() - started) * 1000)
    finally:
        service.close()
    out = {k: round(statistics.median(v), 3) for k, v in figures.items()}
    out["dense_only_hits_per_search"] = round(dense_only / max(len(queries), 1), 2)
    out["queries"] = len(queries)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
