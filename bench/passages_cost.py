"""What explain, highlight and expand cost per search, in process.

    python -m bench.passages_cost --data-dir DIR [--collection eval-scifact] [--queries 100]
    python -m bench.passages_cost --check

``--check`` needs no data directory: over SciFact's corpus it checks that every word starts
with its stem's surface prefix (what ``ragserve.highlight`` looks for before tokenizing) and
that the highlighter's matches are those of tokenizing each whole text, for every query.

Opens DIR (a data directory holding a SciFact collection, e.g. made by ``ragserve eval``) with
the default settings (query cache off) and runs SciFact's test queries as hybrid top-10
searches, each query in five variants in a row: off, explain, highlight, expand (neighbors 1),
all three. Per variant, medians of: the search's wall time less the query embedding (whose
time under load swamps the rest), the calling thread's CPU time for the search and its HTTP
JSON (``search_json``; the embedding runs on the batcher's thread and is not counted), the
highlight and expand stages, and the response's size. Last, what picking each dense-only
hit's best sentence by embedding similarity would cost (its sentences embedded in one call):
the measurement behind not doing it.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import scifact_docs, scifact_test_queries
from ragserve import highlight
from ragserve.api.search_io import search_json
from ragserve.config import Settings
from ragserve.context import ExpandSpec
from ragserve.highlight import HighlightSpec
from ragserve.search import SearchRequest
from ragserve.service import RetrievalService

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {},
    "explain": {"explain": True},
    "highlight": {"highlight": HighlightSpec()},
    "expand": {"expand": ExpandSpec(neighbors=1)},
    "all": {"explain": True, "highlight": HighlightSpec(), "expand": ExpandSpec(neighbors=1)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--collection", default="eval-scifact")
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    if args.check:
        check()
        return
    if args.data_dir is None:
        parser.error("--data-dir is needed (or --check)")
    settings = Settings(data_dir=args.data_dir, query_cache_size=0, rerank_cache_size=0)
    service = RetrievalService.open(settings)
    name = service.store.collection_embedder(args.collection)
    queries = scifact_test_queries()[: args.queries]
    figures: dict[str, dict[str, list[float]]] = {}

    def add(variant: str, key: str, value: float) -> None:
        figures.setdefault(variant, {}).setdefault(key, []).append(value)

    dense_only = 0
    try:
        for q in queries[:10]:  # warm-up
            service.search(args.collection, SearchRequest(q))
        for q in queries:
            hit_ids = set()
            for variant, options in VARIANTS.items():
                cpu = time.thread_time()
                result = service.search(args.collection, SearchRequest(q, **options))
                body = search_json(result)
                add(variant, "cpu_ms", (time.thread_time() - cpu) * 1000)
                t = result.timings_ms
                add(variant, "wall_ms", t["total"] - t["embed"])
                add(variant, "bytes", len(body))
                for stage in ("highlight", "expand"):
                    if stage in t:
                        add(variant, f"{stage}_ms", t[stage])
                hit_ids.add(tuple(h.chunk_id for h in result.hits))
            assert len(hit_ids) == 1, q  # the options never change the hits
            vector = service.embed_queries([q], name)[0]
            started = time.perf_counter()
            for hit in result.hits:
                if "lexical" in hit.scores:
                    continue
                dense_only += 1
                sentences = [s for s in _SENTENCE.split(hit.text) if s.strip()]
                int(np.argmax(service.embed_documents(sentences, name) @ vector))
            add("semantic", "best_sentence_ms", (time.perf_counter() - started) * 1000)
    finally:
        service.close()
    out: dict[str, Any] = {
        variant: {k: round(statistics.median(v), 3) for k, v in keys.items()}
        for variant, keys in figures.items()
    }
    out["dense_only_hits_per_search"] = round(dense_only / max(len(queries), 1), 2)
    out["queries"] = len(queries)
    print(json.dumps(out))


def check() -> None:
    """The highlighter's shortcut against tokenizing everything, over SciFact."""
    texts = [d["text"] for d in scifact_docs()]
    vocabulary = {w for t in texts for w in re.findall(r"[A-Za-z0-9]+", t)}
    wrong = [
        (w, stem)
        for w in sorted(vocabulary)
        for stem in highlight.query_terms(w)
        if not w.lower().startswith(highlight._surface_prefix(stem))
    ]
    print(json.dumps({"words": len(vocabulary), "not_starting_with_prefix": wrong[:20]}))
    differ = 0
    queries = scifact_test_queries()
    for i, q in enumerate(queries):
        terms = highlight.query_terms(q)
        for t in texts[i::50]:
            differ += highlight.matches(t, terms) != highlight._tokens(t, terms, 0)
    print(
        json.dumps({"queries": len(queries), "texts_per_query": len(texts[::50]), "differ": differ})
    )
    if wrong or differ:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
