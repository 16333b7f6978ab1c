"""BEIR-format evaluation: load a dataset, score rankings with nDCG@k and Recall@k.

Protocol (see ../shared/eval/README.md): a document retrieved through several chunks counts once,
at its best rank; queries without judgements are not scored.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ragserve.errors import InvalidInput

Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True, slots=True)
class BeirDataset:
    root: Path
    queries: dict[str, str]
    qrels: Qrels

    def corpus(self) -> Iterator[tuple[str, str, str]]:
        """(id, title, text) per document, streamed from corpus.jsonl."""
        with (self.root / "corpus.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    yield str(rec["_id"]), rec.get("title") or "", rec.get("text") or ""

    @property
    def test_queries(self) -> dict[str, str]:
        return {qid: q for qid, q in self.queries.items() if qid in self.qrels}


def load_beir(root: Path, split: str = "test") -> BeirDataset:
    for needed in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (root / needed).is_file():
            raise InvalidInput(f"{root} is not a BEIR dataset: {needed} is missing")
    queries: dict[str, str] = {}
    with (root / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                queries[str(rec["_id"])] = rec["text"]
    qrels: Qrels = {}
    with (root / "qrels" / f"{split}.tsv").open(encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header and header[0] != "query-id":  # no header line: treat it as data
            qrels.setdefault(header[0], {})[header[1]] = int(header[2])
        for row in reader:
            if len(row) >= 3:
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return BeirDataset(root=root, queries=queries, qrels=qrels)


def dedupe(ranked: Sequence[str]) -> list[str]:
    """Keep each document once, at its best rank."""
    return list(dict.fromkeys(ranked))


def ndcg_at_k(run: Mapping[str, Sequence[str]], qrels: Qrels, k: int = 10) -> float:
    scores = []
    for qid, rels in qrels.items():
        ranked = dedupe(run.get(qid, []))[:k]
        dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
        ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
        scores.append(dcg / idcg if idcg > 0 else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def beir_scores(run: Mapping[str, Sequence[str]], qrels: Qrels) -> dict[str, float]:
    """The two BEIR figures every table here shows, rounded to 4 places."""
    return {
        "ndcg@10": round(ndcg_at_k(run, qrels, 10), 4),
        "recall@100": round(recall_at_k(run, qrels, 100), 4),
    }


def recall_at_k(run: Mapping[str, Sequence[str]], qrels: Qrels, k: int = 100) -> float:
    scores = []
    for qid, rels in qrels.items():
        relevant = {d for d, r in rels.items() if r > 0}
        if not relevant:
            continue
        ranked = set(dedupe(run.get(qid, []))[:k])
        scores.append(len(ranked & relevant) / len(relevant))
    return sum(scores) / len(scores) if scores else 0.0


def drop_identical_ids(run: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Drop a retrieved document whose id equals the query id (BEIR's ``ignore_identical_ids``,
    Anserini's ``-removeQuery``): on ArguAna the query argument is itself in the corpus."""
    return {qid: [d for d in docs if d != qid] for qid, docs in run.items()}


def per_query(run: Mapping[str, Sequence[str]], qrels: Qrels) -> dict[str, dict[str, float]]:
    """nDCG@10 and Recall@100 of each judged query (the means are :func:`beir_scores`)."""
    out = {}
    for qid, rels in qrels.items():
        one = {qid: run.get(qid, [])}
        out[qid] = {
            "ndcg@10": ndcg_at_k(one, {qid: rels}, 10),
            "recall@100": recall_at_k(one, {qid: rels}, 100),
        }
    return out


@dataclass(frozen=True, slots=True)
class Comparison:
    """Run B against run A over the queries both scored: B wins where it scores higher."""

    queries: int
    mean_a: float
    mean_b: float
    wins: int
    losses: int
    ties: int
    #: Two-sided p-value of a paired randomization (sign-flip) test on the differences.
    p_value: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "queries": self.queries,
            "mean_a": round(self.mean_a, 4),
            "mean_b": round(self.mean_b, 4),
            "delta": round(self.mean_b - self.mean_a, 4),
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "p_value": round(self.p_value, 4),
        }


def paired_randomization_test(
    a: Sequence[float], b: Sequence[float], *, rounds: int = 10_000, seed: int = 0
) -> float:
    """Two-sided p-value that paired scores ``a`` and ``b`` have the same mean.

    Under the null each query's difference is as likely to have either sign, so its sign is
    flipped at random ``rounds`` times and the p-value is the share of flipped mean differences
    at least as far from 0 as the observed one (with the observed one counted: never 0).
    """
    import numpy as np

    if len(a) != len(b):
        raise InvalidInput("paired scores must have the same length")
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if diff.size == 0 or not diff.any():
        return 1.0
    observed = abs(diff.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(rounds, diff.size))
    flipped = np.abs((signs * diff).mean(axis=1))
    return float((np.count_nonzero(flipped >= observed - 1e-12) + 1) / (rounds + 1))


def compare(
    a: Mapping[str, float], b: Mapping[str, float], *, rounds: int = 10_000, seed: int = 0
) -> Comparison:
    """Per-query scores of two runs (query id -> score), compared on the queries both have."""
    common = sorted(set(a) & set(b))
    xs = [a[q] for q in common]
    ys = [b[q] for q in common]
    eps = 1e-9
    return Comparison(
        queries=len(common),
        mean_a=sum(xs) / len(xs) if xs else 0.0,
        mean_b=sum(ys) / len(ys) if ys else 0.0,
        wins=sum(y > x + eps for x, y in zip(xs, ys, strict=True)),
        losses=sum(y < x - eps for x, y in zip(xs, ys, strict=True)),
        ties=sum(abs(y - x) <= eps for x, y in zip(xs, ys, strict=True)),
        p_value=paired_randomization_test(xs, ys, rounds=rounds, seed=seed),
    )
