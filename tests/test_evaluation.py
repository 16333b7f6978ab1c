"""BEIR loading, the metrics against hand-computed values, and an evaluation through the service."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ragserve.errors import InvalidInput
from ragserve.evalrun import evaluate, ingest_corpus
from ragserve.evaluation import load_beir, ndcg_at_k, recall_at_k
from tests.api.conftest import make_service, make_settings


def test_ndcg_and_recall_match_hand_computed_values() -> None:
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 2}}
    run = {"q1": ["x", "a", "a", "y", "b"], "q2": ["c"]}
    # q1: a at rank 2, b at rank 4 once duplicates collapse (x, a, y, b)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(run, qrels, 10) == pytest.approx((dcg / idcg + 1.0) / 2)
    assert ndcg_at_k(run, qrels, 1) == pytest.approx((0 + 1.0) / 2)
    assert recall_at_k(run, qrels, 100) == pytest.approx(1.0)
    assert recall_at_k(run, qrels, 2) == pytest.approx((0.5 + 1.0) / 2)
    assert ndcg_at_k({}, qrels, 10) == 0.0  # a query with no results scores 0


def _beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    corpus = [
        ("d1", "Octopus", "An octopus has three hearts."),
        ("d2", "Bread", "Sourdough rises with wild yeast."),
        ("d3", "Rust", "Rust guarantees memory safety."),
    ]
    (root / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": i, "title": t, "text": x}) for i, t, x in corpus)
    )
    queries = [("q1", "octopus hearts"), ("q2", "memory safety"), ("q3", "unjudged")]
    (root / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": i, "text": t}) for i, t in queries)
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n")
    return root


def test_load_beir_keeps_only_judged_queries_as_test_queries(tmp_path: Path) -> None:
    data = load_beir(_beir(tmp_path / "ds"))
    assert set(data.test_queries) == {"q1", "q2"}
    assert [doc_id for doc_id, _, _ in data.corpus()] == ["d1", "d2", "d3"]


def test_load_beir_refuses_a_directory_that_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"qrels/test.tsv is missing"):
        (tmp_path / "corpus.jsonl").write_text("")
        (tmp_path / "queries.jsonl").write_text("")
        load_beir(tmp_path)


def test_evaluation_through_the_service(tmp_path: Path) -> None:
    data = load_beir(_beir(tmp_path / "ds"))
    service = make_service(make_settings(tmp_path))
    try:
        assert ingest_corpus(service, data, "eval") == {"created": 3}
        assert ingest_corpus(service, data, "eval") == {"unchanged": 3}  # kept, not re-embedded
        rows = {row.label: row for row in evaluate(service, data, "eval")}
    finally:
        service.close()
    assert set(rows) == {"lexical", "dense", "hybrid", "hybrid+rerank"}
    for row in rows.values():
        assert row.queries == 2
        assert row.ndcg_at_10 == pytest.approx(1.0)  # each query's one document ranks first
        assert row.recall_at_100 == pytest.approx(1.0)


def test_beir_scores_are_the_two_figures_rounded() -> None:
    from ragserve.evaluation import beir_scores, ndcg_at_k, recall_at_k

    run = {"q1": ["d3", "d1", "d9"], "q2": ["d7"]}
    qrels = {"q1": {"d1": 1, "d2": 2}, "q2": {"d7": 1}}
    assert beir_scores(run, qrels) == {
        "ndcg@10": round(ndcg_at_k(run, qrels, 10), 4),
        "recall@100": round(recall_at_k(run, qrels, 100), 4),
    }
    assert beir_scores(run, qrels)["recall@100"] == 0.75
