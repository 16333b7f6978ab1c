"""Run a BEIR evaluation through the service: ingest the corpus, search every test query per run.

This is what ``ragserve eval DATASET_DIR`` does; the metrics live in :mod:`ragserve.evaluation`.
The corpus is indexed the BEIR way (``title + " " + text`` per document) into a collection that is
kept, so a second run re-embeds nothing (unchanged content hashes). A *run* is a mode, a fusion
(hybrid only; None: the service's default) and rerank on or off; every run's per-query scores are
kept so two runs (of this evaluation or of an earlier one, from its per-query file) can be compared
query by query (:func:`ragserve.evaluation.compare`).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragserve.errors import InvalidInput
from ragserve.evaluation import BeirDataset, drop_identical_ids, per_query
from ragserve.fusion import METHODS, FusionSpec, parse_fusion_text
from ragserve.search import MODES, RERANK_TOP_N, Mode, SearchRequest
from ragserve.service import IngestResult, RetrievalService
from ragserve.types import Document


@dataclass(frozen=True, slots=True)
class Run:
    label: str
    mode: Mode
    rerank: bool = False
    #: Hybrid only; None: the service's default fusion.
    fusion: FusionSpec | None = None
    #: Candidates the reranker sees.
    rerank_top_n: int = RERANK_TOP_N


#: The default rows of the table.
RUNS: tuple[Run, ...] = (
    Run("lexical", "lexical"),
    Run("dense", "dense"),
    Run("hybrid", "hybrid"),
    Run("hybrid+rerank", "hybrid", rerank=True),
)


def parse_run(text: str) -> Run:
    """A run from ``METHOD[:auto|:dense=W,lexical=W,k=K][+rerank]`` (a hybrid fusion variant;
    no weights: equal weights)
    or a mode name (``dense``, ``lexical``, ``hybrid``, each with an optional ``+rerank``).

    Examples: ``rrf:k=60,dense=1,lexical=1`` (equal-weight RRF), ``minmax:dense=0.8,lexical=0.2``,
    ``minmax:auto+rerank``, ``dense+rerank``.
    """
    label = text.strip()
    body, rerank = label, False
    if body.endswith("+rerank"):
        body, rerank = body[: -len("+rerank")], True
    if body in MODES:
        return Run(label, body, rerank)
    if body.partition(":")[0] not in METHODS:
        raise InvalidInput(
            f"unknown run {text!r}: a mode ({', '.join(MODES)}) or a fusion method "
            f"({', '.join(METHODS)}) with options, e.g. minmax:dense=0.8,lexical=0.2"
        )
    return Run(label, "hybrid", rerank, parse_fusion_text(body))


@dataclass(frozen=True, slots=True)
class EvalRow:
    label: str
    ndcg_at_10: float
    recall_at_100: float
    queries: int
    p50_ms: float
    seconds: float
    #: Query id -> {"ndcg@10", "recall@100"}.
    per_query: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: Query id -> the first 10 document ids returned (after dropping identical ids).
    top10: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: The fusion the run asked for ("default" if none).
    fusion: Mapping[str, Any] | str = "default"

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.label,
            "ndcg@10": round(self.ndcg_at_10, 4),
            "recall@100": round(self.recall_at_100, 4),
            "queries": self.queries,
            "p50_ms": round(self.p50_ms, 2),
            "seconds": round(self.seconds, 1),
            "fusion": self.fusion,
        }

    def ndcg_per_query(self) -> dict[str, float]:
        return {qid: scores["ndcg@10"] for qid, scores in self.per_query.items()}


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
    service.ensure_collection(collection, embedder)
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
    runs: Sequence[Run] = RUNS,
    max_queries: int | None = None,
    drop_identical: bool = True,
    progress: Callable[[str, int], None] | None = None,
) -> list[EvalRow]:
    """Every run over the first ``max_queries`` test queries (file order), BEIR protocol: one
    document counts once at its best rank; ``drop_identical``: a hit whose id is the query id
    is dropped before scoring (BEIR's default)."""
    queries = list(dataset.test_queries.items())[: max_queries or None]
    qrels = {qid: dataset.qrels[qid] for qid, _ in queries}
    rows = []
    # One more than 100 when the query itself may be dropped (as BEIR's retrievers ask for).
    top_k = min(101 if drop_identical else 100, service.settings.max_top_k)
    for run in runs:
        ranked: dict[str, list[str]] = {}
        latencies = []
        started = time.perf_counter()
        for i, (qid, text) in enumerate(queries):
            request = SearchRequest(
                query=text,
                top_k=top_k,
                mode=run.mode,
                rerank=run.rerank,
                rerank_top_n=run.rerank_top_n,
                collapse=True,
                fusion=run.fusion,
            )
            t = time.perf_counter()
            result = service.search(collection, request)
            latencies.append((time.perf_counter() - t) * 1000)
            ranked[qid] = [hit.document_id for hit in result.hits]
            if progress:
                progress(run.label, i + 1)
        if drop_identical:
            ranked = drop_identical_ids(ranked)
        ranked = {qid: docs[:100] for qid, docs in ranked.items()}
        scores = per_query(ranked, qrels)
        n = len(scores) or 1
        rows.append(
            EvalRow(
                label=run.label,
                ndcg_at_10=sum(s["ndcg@10"] for s in scores.values()) / n,
                recall_at_100=sum(s["recall@100"] for s in scores.values()) / n,
                queries=len(queries),
                p50_ms=statistics.median(latencies) if latencies else 0.0,
                seconds=time.perf_counter() - started,
                per_query=scores,
                top10={qid: docs[:10] for qid, docs in ranked.items()},
                fusion=run.fusion.as_dict() if run.fusion else "default",
            )
        )
    return rows


def write_per_query(rows: Sequence[EvalRow], path: Path, *, dataset: str = "") -> None:
    """One JSON line per (run, query): the scores and the top 10, for query-by-query diffs."""
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            for qid, scores in row.per_query.items():
                rec = {"dataset": dataset, "run": row.label, "query_id": qid, **scores}
                rec["top10"] = list(row.top10.get(qid, []))
                fh.write(json.dumps(rec) + "\n")


def read_per_query(path: Path) -> dict[str, dict[str, float]]:
    """Run label -> query id -> nDCG@10, from a file :func:`write_per_query` wrote."""
    out: dict[str, dict[str, float]] = {}
    try:
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    out.setdefault(str(rec["run"]), {})[str(rec["query_id"])] = float(
                        rec["ndcg@10"]
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    raise InvalidInput(f"{path}:{n}: not a per-query record ({exc})") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    return out
