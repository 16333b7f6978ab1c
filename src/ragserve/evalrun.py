"""Run a BEIR evaluation through the service: ingest the corpus, search every test query per mode.

This is what ``ragserve eval DATASET_DIR`` does; the metrics live in :mod:`ragserve.evaluation`.
The corpus is indexed the BEIR way (``title + " " + text`` per document) into a collection that is
kept, so a second run re-embeds nothing (unchanged content hashes).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ragserve.errors import CollectionNotFound
from ragserve.evaluation import BeirDataset, ndcg_at_k, recall_at_k
from ragserve.search import Mode, SearchRequest
from ragserve.service import IngestResult, RetrievalService
from ragserve.types import Document

#: The rows of the table: (label, mode, rerank).
RUNS: tuple[tuple[str, Mode, bool], ...] = (
    ("lexical", "lexical", False),
    ("dense", "dense", False),
    ("hybrid", "hybrid", False),
    ("hybrid+rerank", "hybrid", True),
)


@dataclass(frozen=True, slots=True)
class EvalRow:
    label: str
    ndcg_at_10: float
    recall_at_100: float
    queries: int
    p50_ms: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.label,
            "ndcg@10": round(self.ndcg_at_10, 4),
            "recall@100": round(self.recall_at_100, 4),
            "queries": self.queries,
            "p50_ms": round(self.p50_ms, 2),
            "seconds": round(self.seconds, 1),
        }


def corpus_documents(dataset: BeirDataset) -> Iterator[Document]:
    for doc_id, title, text in dataset.corpus():
        yield Document(id=doc_id, text=f"{title} {text}".strip())


def ingest_corpus(
    service: RetrievalService,
    dataset: BeirDataset,
    collection: str,
    *,
    embedder: str | None = None,
    progress: Callable[[IngestResult], None] | None = None,
) -> dict[str, int]:
    try:
        service.get_collection(collection)
    except CollectionNotFound:
        service.create_collection(collection, embedder)
    counts: dict[str, int] = {}
    for result in service.ingest_iter(collection, corpus_documents(dataset)):
        counts[result.status] = counts.get(result.status, 0) + 1
        if progress:
            progress(result)
    return counts


def evaluate(
    service: RetrievalService,
    dataset: BeirDataset,
    collection: str,
    *,
    runs: Sequence[tuple[str, Mode, bool]] = RUNS,
    max_queries: int | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> list[EvalRow]:
    queries = list(dataset.test_queries.items())[: max_queries or None]
    qrels = {qid: dataset.qrels[qid] for qid, _ in queries}
    rows = []
    for label, mode, rerank in runs:
        ranked: dict[str, list[str]] = {}
        latencies = []
        started = time.perf_counter()
        for i, (qid, text) in enumerate(queries):
            t = time.perf_counter()
            result = service.search(
                collection,
                SearchRequest(query=text, top_k=100, mode=mode, rerank=rerank, collapse=True),
            )
            latencies.append((time.perf_counter() - t) * 1000)
            ranked[qid] = [hit.document_id for hit in result.hits]
            if progress:
                progress(label, i + 1)
        rows.append(
            EvalRow(
                label=label,
                ndcg_at_10=ndcg_at_k(ranked, qrels, 10),
                recall_at_100=recall_at_k(ranked, qrels, 100),
                queries=len(queries),
                p50_ms=statistics.median(latencies) if latencies else 0.0,
                seconds=time.perf_counter() - started,
            )
        )
    return rows
