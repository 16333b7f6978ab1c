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
