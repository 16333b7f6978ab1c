"""Fusion methods (ragserve.fusion) against hand-computed values: ties, missing candidates,
empty legs, weights; the request parser; the adaptive weights on synthetic legs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragserve.errors import InvalidInput
from ragserve.fusion import FusionSpec, fuse, parse_fusion
from ragserve.store.base import ChunkRef


def ref(doc: str, score: float) -> ChunkRef:
    return ChunkRef(f"key {doc}", doc, 0, score)


def order(legs: list[tuple[str, list[ChunkRef]]], spec: FusionSpec, query: str = "") -> list[str]:
    return [c.chunk.document_id for c in fuse(legs, spec, query=query).candidates]


def scores(legs: list[tuple[str, list[ChunkRef]]], spec: FusionSpec) -> dict[str, float]:
    return {c.chunk.document_id: c.score for c in fuse(legs, spec).candidates}


DENSE = [ref("a", 0.9), ref("b", 0.7), ref("c", 0.5)]
LEXICAL = [ref("c", 12.0), ref("d", 8.0), ref("a", 4.0)]
LEGS = [("dense", DENSE), ("lexical", LEXICAL)]


def test_weighted_rrf_by_hand() -> None:
    got = scores(LEGS, FusionSpec("rrf", {"dense": 1.0, "lexical": 2.0}, k=10))
    assert got["a"] == pytest.approx(1 / 11 + 2 / 13)
    assert got["b"] == pytest.approx(1 / 12)  # lexical did not return b: nothing from it
    assert got["c"] == pytest.approx(1 / 13 + 2 / 11)
    assert got["d"] == pytest.approx(2 / 12)
    assert order(LEGS, FusionSpec("rrf", {"dense": 1.0, "lexical": 2.0}, k=10)) == list("cadb")


def test_minmax_by_hand_with_missing_candidates_at_the_floor() -> None:
    got = scores(LEGS, FusionSpec("minmax", {"dense": 0.75, "lexical": 0.25}))
    # dense: a 1, b 0.5, c 0; lexical: c 1, d 0.5, a 0; missing -> the leg's floor (0)
    assert got == pytest.approx({"a": 0.75, "b": 0.375, "c": 0.25, "d": 0.125})


def test_zscore_and_dbsf_by_hand() -> None:
    import numpy as np

    d = np.array([0.9, 0.7, 0.5])
    zd = (d - d.mean()) / d.std()
    got = scores([("dense", DENSE)], FusionSpec("zscore", {"dense": 1.0}))
    assert [got[x] for x in "abc"] == pytest.approx(zd.tolist())
    # A candidate the dense leg missed gets the dense floor (its lowest z), not 0.
    got = scores(LEGS, FusionSpec("zscore", {"dense": 1.0, "lexical": 0.0}))
    assert got["d"] == pytest.approx(zd.min())
    dbsf = np.clip((d - (d.mean() - 3 * d.std())) / (6 * d.std()), 0, 1)
    got = scores([("dense", DENSE)], FusionSpec("dbsf", {"dense": 1.0}))
    assert [got[x] for x in "abc"] == pytest.approx(dbsf.tolist())


@pytest.mark.parametrize("method", ["rrf", "minmax", "zscore", "dbsf"])
def test_empty_legs(method: Any) -> None:
    spec = FusionSpec(method, {"dense": 1.0, "lexical": 1.0})
    assert fuse([("dense", []), ("lexical", [])], spec).candidates == []
    # One empty leg: the other's order stands.
    assert order([("dense", DENSE), ("lexical", [])], spec) == list("abc")
    assert order([("dense", []), ("lexical", LEXICAL)], spec) == list("cda")


@pytest.mark.parametrize("method", ["rrf", "minmax", "zscore", "dbsf"])
def test_ties_are_broken_by_chunk_id_and_a_tied_leg_still_counts(method: Any) -> None:
    tied = [ref("z", 1.0), ref("y", 1.0)]
    spec = FusionSpec(method, {"dense": 1.0, "lexical": 1.0})
    other = [ref("x", 0.5), ref("w", 0.5), ref("y", 0.5), ref("z", 0.5)]
    got = order([("dense", tied), ("lexical", other)], spec)
    if method != "rrf":  # both legs tied: y and z found by both come first, by chunk id
        assert got == ["y", "z", "w", "x"]
    # A one-hit leg: what it found beats what it did not.
    assert order([("dense", [ref("q", 0.3)]), ("lexical", [])], spec) == ["q"]
    lexical = [ref("a", 1.0), ref("b", 0.9), ref("c", 0.0)]
    assert order([("dense", [ref("b", 0.3)]), ("lexical", lexical)], spec) == list("bac")


def test_weights_move_the_result_between_the_legs() -> None:
    for method in ("rrf", "minmax", "zscore", "dbsf"):
        assert order(LEGS, FusionSpec(method, {"dense": 1.0, "lexical": 0.0}))[:3] == list("abc")
        assert order(LEGS, FusionSpec(method, {"dense": 0.0, "lexical": 1.0}))[:3] == list("cda")


def test_a_chunk_listed_twice_by_one_leg_counts_once() -> None:
    twice = [ref("a", 0.9), ref("b", 0.5), ref("a", 0.1)]
    got = scores([("dense", twice)], FusionSpec("rrf", {"dense": 1.0}, k=0))
    assert got == pytest.approx({"a": 1.0, "b": 0.5})


def test_each_candidate_keeps_every_legs_own_score() -> None:
    fused = fuse(LEGS, FusionSpec("minmax", {"dense": 1.0, "lexical": 1.0}))
    by = {c.chunk.document_id: c.scores for c in fused.candidates}
    assert by["a"]["dense"] == 0.9 and by["a"]["lexical"] == 4.0
    assert "lexical" not in by["b"] and by["b"]["fused"] == pytest.approx(0.5)
    assert fused.weights == {"dense": 1.0, "lexical": 1.0}


@pytest.mark.parametrize(
    "value",
    [
        {"method": "cosine"},
        {"k": -1},
        {"k": 1.5},
        {"weights": {"sparse": 1.0}},
        {"weights": {"dense": -1.0}},
        {"weights": {"dense": float("nan")}},
        {"weights": {"dense": 0.0, "lexical": 0.0}},
        {"weights": [0.5, 0.5]},
        {"alpha": 0.5},
    ],
)
def test_bad_fusion_options_are_refused(value: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        parse_fusion(value, FusionSpec())


def test_parse_fusion_takes_missing_keys_from_the_default() -> None:
    default = FusionSpec("rrf", {"dense": 1.0, "lexical": 0.5}, k=30)
    assert parse_fusion(None, default) is default
    assert parse_fusion({"k": 5}, default) == FusionSpec("rrf", {"dense": 1.0, "lexical": 0.5}, 5)
    assert parse_fusion({"weights": "auto"}, default).weights is None
    assert parse_fusion({"method": "dbsf"}, default).method == "dbsf"


def test_adaptive_weights_favour_the_leg_whose_best_hits_stand_out() -> None:
    from ragserve.fusion import adaptive_weights, peakedness

    flat = [1.0 - i * 0.01 for i in range(50)]  # gentle fall-off: nothing specific found
    peaked = [5.0, 4.8] + [1.0 - i * 0.01 for i in range(48)]  # two clear winners
    assert peakedness(peaked) > 2 * peakedness(flat)
    w = adaptive_weights({"dense": peaked, "lexical": flat})
    assert w["dense"] > 0.6 and w["lexical"] < 0.4
    assert sum(w.values()) == pytest.approx(1.0)
    w = adaptive_weights({"dense": flat, "lexical": peaked})
    assert w["lexical"] > 0.6
    # Same shape, any scale: BM25's unbounded scores and cosines are treated alike.
    scaled = adaptive_weights({"dense": peaked, "lexical": [x * 17.0 for x in peaked]})
    assert scaled["dense"] == pytest.approx(0.5)
    # An empty leg gets nothing; a one-hit or all-tied leg the floor, never more than a spread.
    assert adaptive_weights({"dense": peaked, "lexical": []}) == {"dense": 1.0, "lexical": 0.0}
    assert adaptive_weights({"dense": [], "lexical": []}) == {"dense": 0.5, "lexical": 0.5}
    assert peakedness([3.0]) == peakedness([2.0, 2.0]) == 0.5
    assert peakedness([100.0] + [0.0] * 49) == 7.0  # (100 - 2) / 14: the z of the best score


def test_adaptive_fusion_reports_the_weights_it_chose() -> None:
    flat = [ref(d, 1.0 - i * 0.01) for i, d in enumerate("abcdefghij")]
    peaked = [ref("x", 9.0)] + [ref(d, 1.0 - i * 0.01) for i, d in enumerate("klmnopqrs")]
    fused = fuse([("dense", flat), ("lexical", peaked)], FusionSpec("minmax", None))
    assert fused.weights["lexical"] > fused.weights["dense"]
    assert fused.candidates[0].chunk.document_id == "x"


def test_the_default_is_minmax_with_equal_weights() -> None:
    assert FusionSpec() == FusionSpec("minmax", {"dense": 1.0, "lexical": 1.0}, 60)


def test_fusion_text_parses_the_cli_forms() -> None:
    from ragserve.fusion import parse_fusion_text

    assert parse_fusion_text("minmax").as_dict() == {
        "method": "minmax",
        "weights": {"dense": 1.0, "lexical": 1.0},
        "k": 60,
    }
    assert parse_fusion_text("rrf:k=5,dense=1,lexical=0.5").as_dict() == {
        "method": "rrf",
        "weights": {"dense": 1.0, "lexical": 0.5},
        "k": 5,
    }
    assert parse_fusion_text("zscore:auto").weights is None
    for bad, fragment in [("nope", "unknown fusion"), ("rrf:k", "name=number"), ("rrf:x=1", "x")]:
        with pytest.raises(InvalidInput, match=fragment):
            parse_fusion_text(bad)


def test_cli_sets_shows_and_clears_a_collection_fusion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ragserve.cli import app
    from ragserve.config import Settings
    from ragserve.service import RetrievalService

    monkeypatch.setenv("RAGSERVE_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    made = runner.invoke(app, ["collections", "create", "kb", "--fusion", "rrf:k=5"])
    assert made.exit_code == 0, made.output
    service = RetrievalService.open(Settings(data_dir=tmp_path), load_models=False)
    try:
        spec = service.collection_fusion("kb")
        assert spec is not None and (spec.method, spec.k) == ("rrf", 5)
    finally:
        service.close()
    assert runner.invoke(app, ["collections", "fusion", "kb", "minmax:auto"]).exit_code == 0
    shown = runner.invoke(app, ["collections", "show", "kb"])
    assert shown.exit_code == 0 and '"weights": "auto"' in shown.stdout  # as GET shows it
    bad = runner.invoke(app, ["collections", "fusion", "kb", "minmax:dense=0,lexical=0"])
    assert bad.exit_code == 1 and "at least one fusion weight" in bad.output
    assert runner.invoke(app, ["collections", "fusion", "nope", "rrf"]).exit_code == 1
    service = RetrievalService.open(Settings(data_dir=tmp_path), load_models=False)
    try:
        spec = service.collection_fusion("kb")
        assert spec is not None and spec.weights is None  # the bad one changed nothing
    finally:
        service.close()
    assert runner.invoke(app, ["collections", "fusion", "kb", "default"]).exit_code == 0
    service = RetrievalService.open(Settings(data_dir=tmp_path), load_models=False)
    try:
        assert service.collection_fusion("kb") is None
    finally:
        service.close()
