"""Rerankers side by side through the real search path, with their logits cached on disk.

    python -m bench.rerank_eval --data-dir DIR --collection C --dataset BEIR_DIR
        [--max-queries 100] [--variant NAME[@MAX_LENGTH][+window] ...]
        [--cache FILE] [--top-n 20]

For every variant (a cached reranker, its max length, and whether long passages are cut to their
best-matching window instead of their head) the BEIR test queries are searched hybrid + rerank
with the service's own fusion (``rerank_fuse``), next to plain hybrid; prints nDCG@10 per row,
the paired comparison with hybrid and with the first variant (wins / losses, randomization
p), and the median time the variant's reranker took for one search's head when it had to
compute it. Logits are cached in ``--cache`` (JSON) per variant, query and passage, so a second
run only computes what is new: the rerankers cost seconds a query on a busy 2-core machine.
Settings come from the environment (``RAGSERVE_MODEL_DIR`` etc.); DIR is opened read-only in
spirit (nothing is ingested).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ragserve.config import Settings
from ragserve.evalrun import Run, evaluate
from ragserve.evaluation import compare, load_beir
from ragserve.models.catalog import ModelSpec
from ragserve.models.reranker import OnnxReranker, Scores
from ragserve.service import RetrievalService


class CachedLogits:
    """A reranker whose logits are looked up in (and added to) a dict kept on disk."""

    def __init__(self, inner: OnnxReranker, table: dict[str, float], tag: str) -> None:
        self.inner, self.table, self.tag = inner, table, tag
        self.times_ms: list[float] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def _key(self, query: str, passage: str) -> str:
        return hashlib.sha1(f"{self.tag}\0{query}\0{passage}".encode()).hexdigest()

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> Scores:
        keys = [self._key(q, p) for q, p in pairs]
        missing = [i for i, k in enumerate(keys) if k not in self.table]
        if missing:
            t = time.perf_counter()
            logits = self.inner.score_pairs([pairs[i] for i in missing])
            if len(missing) == len(pairs):
                self.times_ms.append((time.perf_counter() - t) * 1000)
            for i, x in zip(missing, logits, strict=True):
                self.table[keys[i]] = float(x)
        return np.array([self.table[k] for k in keys], dtype=np.float32)


def parse_variant(text: str) -> tuple[str, int | None, bool]:
    body, window = (text[: -len("+window")], True) if text.endswith("+window") else (text, False)
    name, _, length = body.partition("@")
    return name, int(length) if length else None, window


def variant_reranker(service: RetrievalService, variant: str) -> tuple[ModelSpec, OnnxReranker]:
    """The cached reranker a variant names, at its max length (default: the settings') and
    with windows or heads, on the service's session and batching settings."""
    name, length, window = parse_variant(variant)
    spec = service.models.catalog.get(name)
    reranker = OnnxReranker(
        service.models.cache.verify(spec),
        service.models.session_config,
        max_length=length or service.settings.rerank_max_length,
        batching=service.models.batching,
        window=window,
    )
    return spec, reranker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--max-queries", type=int, default=100)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--cache", type=Path, default=Path("rerank-logits.json"))
    parser.add_argument("--top-n", type=int, default=20, help="candidates each variant reranks")
    args = parser.parse_args()

    table: dict[str, float] = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    data = load_beir(args.dataset)
    settings = Settings(data_dir=args.data_dir, rerank_cache_size=0, query_cache_size=0)
    service = RetrievalService.open(settings, load_models=False)
    rows = []
    try:
        (base,) = evaluate(
            service, data, args.collection, runs=[Run("hybrid", "hybrid")],
            max_queries=args.max_queries,
        )  # fmt: skip
        rows.append((base, None))
        for variant in args.variant:
            spec, reranker = variant_reranker(service, variant)
            cached = CachedLogits(reranker, table, variant)
            service.models.provide(replace(spec, name=f"eval:{variant}"), cached)
            service.settings = settings.model_copy(update={"reranker": f"eval:{variant}"})
            run = Run(variant, "hybrid", rerank=True, rerank_top_n=args.top_n)
            (row,) = evaluate(
                service, data, args.collection, runs=[run], max_queries=args.max_queries
            )
            args.cache.write_text(json.dumps(table))
            rows.append((row, cached))
    finally:
        service.close()
    first = rows[1][0] if len(rows) > 1 else None
    out = []
    for row, cached in rows:
        rec = {"run": row.label, "ndcg@10": round(row.ndcg_at_10, 4), "queries": row.queries}
        if row is not base:
            c = compare(base.ndcg_per_query(), row.ndcg_per_query())
            rec["vs hybrid"] = (
                f"{c.mean_b - c.mean_a:+.4f} W/L {c.wins}/{c.losses} p {c.p_value:.3f}"
            )
        if first is not None and row is not first and row is not base:
            c = compare(first.ndcg_per_query(), row.ndcg_per_query())
            rec["vs first"] = (
                f"{c.mean_b - c.mean_a:+.4f} W/L {c.wins}/{c.losses} p {c.p_value:.3f}"
            )
        if cached is not None and cached.times_ms:
            rec["rerank_ms_p50"] = round(statistics.median(cached.times_ms), 1)
        out.append(rec)
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
