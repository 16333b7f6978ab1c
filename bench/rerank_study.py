"""How the reranked head is fused: variants of ``ragserve.search.rerank_fuse`` over cached logits.

Run: ``python -m bench.rerank_study --data-dir D --collection C --dataset /work/shared/eval/X``
``[--reranker NAME] [--max-queries N] [--top-n 20 30]``. Prints JSON (nDCG@10 per variant).

Each (query, passage) logit is computed once and kept in ``bench/out/logits-<reranker>-<h>.json``,
so a sweep over fusion designs costs searches, not cross-encoder passes. Every variant runs the
real search path (``RetrievalService.search``) with the head fusion swapped in; candidates per
side and the fused base are the service's defaults. Test queries are read from the BEIR folder,
so a sweep here looks at test queries: use it to see, not to fit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import ragserve.search as search_mod
from ragserve.config import Settings
from ragserve.evaluation import drop_identical_ids, load_beir, per_query
from ragserve.search import SearchRequest
from ragserve.service import RetrievalService

OUT = Path(__file__).parent / "out"

Fuse = Callable[..., Any]


class DiskLogits:
    """A reranker (``score_pairs``) whose (query, passage) logits are kept on disk as JSON."""

    def __init__(self, path: Path, inner: Any) -> None:
        self.path = path
        self.inner = inner
        self.name = inner.name
        self.cache: dict[str, float] = (
            json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        )
        self.calls = 0

    @staticmethod
    def key(query: str, passage: str) -> str:
        return hashlib.sha1(f"{query}\x00{passage}".encode()).hexdigest()

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> Any:
        keys = [self.key(q, p) for q, p in pairs]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            logits = self.inner.score_pairs([pairs[i] for i in missing])
            for i, logit in zip(missing, np.asarray(logits).tolist(), strict=True):
                self.cache[keys[i]] = float(logit)
            self.calls += 1
            if self.calls % 25 == 0:
                self.save()
        return np.asarray([self.cache[k] for k in keys], dtype=np.float32)

    def save(self) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.cache), encoding="utf-8")
        tmp.replace(self.path)


def _minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def score_fuse(alpha: float, norm: str = "minmax") -> Fuse:
    """Head ranked by (1 - alpha) * normalised fused score + alpha * normalised logit."""

    def fuse(candidates: list[Any], logits: Sequence[float], **_: Any) -> list[Any]:
        n = len(logits)
        head, tail = candidates[:n], candidates[n:]
        lg = np.asarray(logits, dtype=np.float64)
        fused = np.asarray([c.score for c in head], dtype=np.float64)
        if norm == "minmax":
            a, b = _minmax(fused), _minmax(lg)
        else:
            a = (fused - fused.mean()) / (fused.std() or 1.0)
            b = (lg - lg.mean()) / (lg.std() or 1.0)
        total = (1 - alpha) * a + alpha * b
        for i, cand in enumerate(head):
            cand.scores["rerank"] = float(lg[i])
            cand.score = float(total[i]) + 10.0
        head.sort(key=lambda c: (-c.score, c.chunk.chunk_id))
        for j, cand in enumerate(tail):
            cand.score = 10.0 * (len(tail) - j) / (len(tail) + 1) - 10.0
        return head + tail

    return fuse


def variants(base: Fuse) -> dict[str, tuple[Fuse | None, dict[str, Any]]]:
    """name -> (head fusion or None for the shipped one, SearchRequest overrides)."""
    out: dict[str, tuple[Fuse | None, dict[str, Any]]] = {
        "hybrid": (None, {"rerank": False}),
        "dense": (None, {"rerank": False, "mode": "dense"}),
        "shipped rrf head": (None, {}),
    }
    for alpha in (0.2, 0.3, 0.4, 0.5):
        out[f"minmax a={alpha}"] = (score_fuse(alpha), {})
        out[f"z a={alpha}"] = (score_fuse(alpha, "z"), {})
    out["reranker order"] = (None, {"rerank_retrieval_weight": 0.0})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--reranker", default=None)
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--top-n", type=int, nargs="+", default=[20])
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run")
    args = parser.parse_args()
    settings = Settings(data_dir=args.data_dir, max_query_chars=8192, rerank_cache_size=0)
    if args.reranker:
        settings = settings.model_copy(update={"reranker": args.reranker})
    service = RetrievalService.open(settings)
    ds = load_beir(args.dataset)
    queries = list(ds.test_queries.items())[: args.max_queries or None]
    qrels = {qid: ds.qrels[qid] for qid, _ in queries}
    tag = hashlib.sha256(str(args.dataset.resolve()).encode()).hexdigest()[:8]
    logits = DiskLogits(
        OUT / f"logits-{settings.reranker}-{settings.rerank_max_length}-{tag}.json",
        service.reranker(),
    )
    service.reranker = lambda name=None: logits  # type: ignore[method-assign,assignment]
    shipped = search_mod.rerank_fuse
    table: dict[str, Any] = {}
    for top_n in args.top_n:
        for name, (fuse, overrides) in variants(shipped).items():
            if args.only and name not in args.only:
                continue
            search_mod.rerank_fuse = fuse or shipped  # type: ignore[assignment]
            ranked: dict[str, list[str]] = {}
            for qid, text in queries:
                req = SearchRequest(
                    **{
                        "query": text,
                        "top_k": 101,
                        "mode": "hybrid",
                        "rerank": True,
                        "collapse": True,
                        "rerank_top_n": top_n,
                        **overrides,
                    }
                )
                result = service.search(args.collection, req)
                ranked[qid] = [h.document_id for h in result.hits]
            ranked = {q: d[:100] for q, d in drop_identical_ids(ranked).items()}
            scores = per_query(ranked, qrels)
            nd = statistics.fmean(s["ndcg@10"] for s in scores.values())
            label = f"top{top_n} {name}"
            table[label] = round(nd, 4)
            table.setdefault("_per_query", {})[label] = {q: s["ndcg@10"] for q, s in scores.items()}
            print(json.dumps({label: round(nd, 4)}), file=sys.stderr, flush=True)
            logits.save()
    search_mod.rerank_fuse = shipped  # type: ignore[assignment]
    per_q = table.pop("_per_query")
    out = {"reranker": settings.reranker, "queries": len(queries), "ndcg@10": table}
    (OUT / f"rerank-study-{settings.reranker}-{tag}.json").write_text(
        json.dumps({**out, "per_query": per_q}), encoding="utf-8"
    )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
