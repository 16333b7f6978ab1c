"""BEIR loading, the metrics against hand-computed values, and an evaluation through the service."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from ragserve.errors import InvalidInput
from ragserve.evalrun import Run, evaluate, ingest_corpus
from ragserve.evaluation import load_beir, ndcg_at_k, recall_at_k
from tests.fakes import FakeReranker, make_service, make_settings


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


def test_a_run_reranks_as_many_candidates_as_it_says(tmp_path: Path) -> None:
    data = load_beir(_beir(tmp_path / "ds"))
    reranker = FakeReranker()
    settings = make_settings(tmp_path, rerank_cache_size=0)
    service = make_service(settings, reranker=reranker)
    try:
        ingest_corpus(service, data, "eval")
        for n in (2, 3):
            reranker.calls.clear()
            evaluate(service, data, "eval", runs=[Run("r", "hybrid", rerank=True, rerank_top_n=n)])
            assert reranker.calls and {len(c) for c in reranker.calls} == {n}
    finally:
        service.close()


def test_beir_scores_are_the_two_figures_rounded() -> None:
    from ragserve.evaluation import beir_scores, ndcg_at_k, recall_at_k

    run = {"q1": ["d3", "d1", "d9"], "q2": ["d7"]}
    qrels = {"q1": {"d1": 1, "d2": 2}, "q2": {"d7": 1}}
    assert beir_scores(run, qrels) == {
        "ndcg@10": round(ndcg_at_k(run, qrels, 10), 4),
        "recall@100": round(recall_at_k(run, qrels, 100), 4),
    }
    assert beir_scores(run, qrels)["recall@100"] == 0.75


def test_identical_ids_are_dropped_before_scoring() -> None:
    from ragserve.evaluation import drop_identical_ids

    qrels = {"q1": {"d2": 1}}
    run = {"q1": ["q1", "d2"]}  # the query argument itself comes first (ArguAna)
    assert ndcg_at_k(run, qrels, 1) == 0.0
    assert drop_identical_ids(run) == {"q1": ["d2"]}
    assert ndcg_at_k(drop_identical_ids(run), qrels, 1) == 1.0


def test_per_query_scores_average_to_the_run_scores() -> None:
    from ragserve.evaluation import per_query

    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 2}, "q3": {"z": 1}}
    run = {"q1": ["x", "a", "y", "b"], "q2": ["c"]}
    scores = per_query(run, qrels)
    assert set(scores) == {"q1", "q2", "q3"}
    assert scores["q2"] == {"ndcg@10": 1.0, "recall@100": 1.0}
    assert scores["q3"] == {"ndcg@10": 0.0, "recall@100": 0.0}  # no results: 0, still counted
    mean = sum(s["ndcg@10"] for s in scores.values()) / 3
    assert mean == pytest.approx(ndcg_at_k(run, qrels, 10))


def test_paired_randomization_test() -> None:
    from ragserve.evaluation import compare, paired_randomization_test

    a = [0.5] * 40
    assert paired_randomization_test(a, a) == 1.0  # no difference at all
    better = [x + 0.2 for x in a]
    assert paired_randomization_test(a, better, rounds=2000) < 0.001  # 40 wins out of 40
    # Small differences of both signs: no evidence of a difference.
    noisy = [x + (0.01 if i % 2 else -0.01) for i, x in enumerate(a)]
    assert paired_randomization_test(a, noisy) > 0.5
    # Deterministic for a seed; symmetric in its arguments.
    mixed = [x + (0.3 if i % 3 == 0 else -0.05) for i, x in enumerate(a)]
    p = paired_randomization_test(a, mixed, seed=1)
    assert (
        p
        == paired_randomization_test(a, mixed, seed=1)
        == paired_randomization_test(mixed, a, seed=1)
    )
    c = compare({"q1": 0.2, "q2": 0.5, "q3": 0.1, "qx": 1.0}, {"q1": 0.4, "q2": 0.5, "q3": 0.0})
    assert (c.queries, c.wins, c.losses, c.ties) == (3, 1, 1, 1)
    assert c.as_dict()["delta"] == pytest.approx((0.4 + 0.5 + 0.0 - 0.2 - 0.5 - 0.1) / 3, abs=1e-4)
    with pytest.raises(InvalidInput):
        paired_randomization_test([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("text", "mode", "rerank", "fusion"),
    [
        ("dense", "dense", False, None),
        ("dense+rerank", "dense", True, None),
        ("rrf", "hybrid", False, ("rrf", {"dense": 1.0, "lexical": 1.0}, 60)),
        (
            "rrf:k=10,lexical=0.3,dense=1",
            "hybrid",
            False,
            ("rrf", {"lexical": 0.3, "dense": 1.0}, 10),
        ),
        (
            "minmax:dense=0.8,lexical=0.2",
            "hybrid",
            False,
            ("minmax", {"dense": 0.8, "lexical": 0.2}, 60),
        ),
        ("zscore:auto+rerank", "hybrid", True, ("zscore", None, 60)),
        ("dbsf", "hybrid", False, ("dbsf", {"dense": 1.0, "lexical": 1.0}, 60)),
    ],
)
def test_parse_run(text: str, mode: str, rerank: bool, fusion: Any) -> None:
    from ragserve.evalrun import parse_run
    from ragserve.fusion import FusionSpec

    run = parse_run(text)
    assert (run.label, run.mode, run.rerank) == (text, mode, rerank)
    assert run.fusion == (FusionSpec(*fusion) if fusion else None)


@pytest.mark.parametrize(
    "text", ["fuzzy", "minmax:dense", "minmax:dense=x", "rrf:k=-1", "rrf:sparse=1"]
)
def test_parse_run_refuses_bad_variants(text: str) -> None:
    from ragserve.evalrun import parse_run

    with pytest.raises(InvalidInput):
        parse_run(text)


def test_fusion_variants_and_per_query_file_through_the_service(tmp_path: Path) -> None:
    from ragserve.evalrun import parse_run, read_per_query, write_per_query

    data = load_beir(_beir(tmp_path / "ds"))
    # q1's id is also a corpus id: the identical-id rule must drop it.
    (tmp_path / "ds" / "corpus.jsonl").write_text(
        (tmp_path / "ds" / "corpus.jsonl").read_text()
        + "\n"
        + json.dumps({"_id": "q1", "title": "Octopus hearts", "text": "octopus hearts octopus"})
    )
    service = make_service(make_settings(tmp_path))
    runs = [parse_run("lexical"), parse_run("rrf:k=60"), parse_run("minmax:dense=0.8,lexical=0.2")]
    try:
        ingest_corpus(service, data, "eval")
        kept = {
            r.label: r for r in evaluate(service, data, "eval", runs=runs, drop_identical=False)
        }
        rows = evaluate(service, data, "eval", runs=runs)
    finally:
        service.close()
    assert kept["lexical"].top10["q1"][0] == "q1"  # the query's own argument ranks first...
    assert kept["lexical"].per_query["q1"]["ndcg@10"] < 1.0
    by = {r.label: r for r in rows}
    assert "q1" not in by["lexical"].top10["q1"]  # ...and is dropped by default
    assert by["lexical"].per_query["q1"]["ndcg@10"] == pytest.approx(1.0)
    assert by["minmax:dense=0.8,lexical=0.2"].fusion == {
        "method": "minmax",
        "weights": {"dense": 0.8, "lexical": 0.2},
        "k": 60,
    }
    path = tmp_path / "per-query.jsonl"
    write_per_query(rows, path, dataset="ds")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3 * 2  # runs x judged queries
    assert {"dataset", "run", "query_id", "ndcg@10", "recall@100", "top10"} <= set(lines[0])
    back = read_per_query(path)
    assert back == {r.label: r.ndcg_per_query() for r in rows}
    (tmp_path / "bad.jsonl").write_text('{"run": "x"}\n')
    with pytest.raises(InvalidInput, match=r"bad\.jsonl:1"):
        read_per_query(tmp_path / "bad.jsonl")


@pytest.mark.parametrize(
    "args",
    [
        ["--fusion", "cosine"],
        ["--fusion", "minmax:dense=x"],
        ["--fusion", "dense"],  # the same label as a default row
    ],
)
def test_cli_eval_refuses_bad_runs_before_any_work(tmp_path: Path, args: list[str]) -> None:
    from typer.testing import CliRunner

    from ragserve.cli import app

    ds = _beir(tmp_path / "ds")
    result = CliRunner().invoke(app, ["eval", str(ds), "--no-rerank", *args])
    assert result.exit_code == 2, result.output  # 2: bad arguments, before any indexing
