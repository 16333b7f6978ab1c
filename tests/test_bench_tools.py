"""The benchmark suite's pure pieces: ratios, checks, corpus selection, the page (no servers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.footprint import canonical, closure
from bench.run_all import QUICK, select_corpus, summarize_runs


def spread(median: float, lo: float | None = None, hi: float | None = None) -> dict[str, float]:
    return {
        "median": median,
        "min": median if lo is None else lo,
        "max": median if hi is None else hi,
        "runs": 3,
    }


def load(p50: float, rps: float, *, lo: float = 0.9, hi: float = 1.1) -> dict[str, Any]:
    return {
        f"c{c}": {
            "p50_ms": spread(p50 * c, p50 * c * lo, p50 * c * hi),
            "p95_ms": spread(2 * p50 * c),
            "p99_ms": spread(3 * p50 * c),
            "throughput_rps": spread(rps, rps * lo, rps * hi),
            "errors": {},
            "ok": 100,
        }
        for c in (1, 4, 16, 64)
    }


def fake_result() -> dict[str, Any]:
    """ragserve 5x faster than the reference, 3x less memory, equal quality (same model)."""
    return {
        "meta": {
            "machine": "2 cores, Test CPU, Python 3.11.9",
            "command": "make bench  (= python -m bench.run_all)",
            "quick": False,
            "plan": {"repeats": 3, "cold_starts": 3, "requests": 10, "seconds": 1},
            "load_average_1m": spread(0.5, 0.2, 0.9),
        },
        "published": report.PUBLISHED,
        "systems": {
            "ragserve": {
                "quality": {
                    "lexical": {"ndcg@10": 0.66, "recall@100": 0.9},
                    "hybrid": {"ndcg@10": 0.72, "recall@100": 0.95},
                },
                "load": {"hybrid": load(10, 200)},
                "rss_after_load_mb": spread(300, 290, 310),
                "rss_after_ingest_mb": 280,
                "cold_start": {"seconds": spread(2.0, 1.8, 2.3)},
                "ingest": {"documents": 10, "chunks": 12, "seconds": 1, "documents_per_s": 10},
            },
            "ragserve-minilm": {
                "quality": {"dense": {"ndcg@10": 0.640, "recall@100": 0.92}},
                "load": {"dense": load(5, 250)},
                "rss_after_load_mb": spread(250),
            },
            "reference": {
                "quality": {"dense": {"ndcg@10": 0.645, "recall@100": 0.925}},
                "load": {"dense": load(25, 50)},
                "rss_after_load_mb": spread(750),
            },
        },
        "footprint": {
            "ragserve": {
                "packages_mb": 380,
                "models_mb": 137,
                "total_mb": 517,
                "image_estimate_mb": 647,
                "largest_mb": {"onnxruntime": 80},
                "note": "n",
            }
        },
    }


def test_ratio_uses_medians_and_the_widest_range() -> None:
    r = report.ratio(spread(10, 8, 12), spread(2, 1, 4))
    assert r == {"value": 5.0, "low": 2.0, "high": 12.0}
    assert report.ratio(None, spread(1)) is None
    assert report.ratio(spread(1), spread(0)) is None


def test_ratios_say_how_many_times_better_ragserve_is() -> None:
    rows = {r["pair"]: r for r in report.ratios(fake_result())}
    same = rows["same model, dense vs dense"]
    assert same["p50_c16"]["value"] == 5.0  # reference 25*16 ms / ragserve 5*16 ms
    assert same["throughput_c16"]["value"] == 5.0  # 250 / 50
    assert same["memory"]["value"] == 3.0  # 750 / 250
    assert same["ndcg_delta"] == pytest.approx(-0.005)
    # The rerank pair is skipped: ragserve's result has no hybrid+rerank load.
    assert "ragserve default hybrid + rerank vs reference" not in rows


def test_checks_pass_fail_and_robustness() -> None:
    result = fake_result()
    by_name = {c["name"]: c for c in report.checks(result)}
    assert by_name["same model, dense vs dense: p50 latency at c16"]["pass"] is True
    # int8 0.640 vs fp32 0.645 is "equal" within the stated tolerance
    assert by_name["same model, dense vs dense: nDCG@10"]["pass"] is True
    # default pair: throughput 200/50 = 4x passes; memory 750/300 = 2.5x passes
    assert by_name["ragserve default (bge, hybrid) vs reference: throughput at c16"]["pass"]
    assert by_name["ragserve: cold start (process start → /readyz 200)"]["pass"] is True
    # search p50 at c1: 10 ms
    assert by_name["ragserve: search p50 (hybrid, c1)"]["pass"] is True
    # Worse quality fails; a spread that crosses the bound passes only at the median.
    result["systems"]["ragserve-minilm"]["quality"]["dense"]["ndcg@10"] = 0.60
    result["systems"]["ragserve-minilm"]["load"]["dense"] = load(5, 160, lo=0.5, hi=1.5)
    by_name = {c["name"]: c for c in report.checks(result)}
    assert by_name["same model, dense vs dense: nDCG@10"]["pass"] is False
    thr = by_name["same model, dense vs dense: throughput at c16"]
    assert thr["pass"] is True and thr["robust"] is False  # 3.2x, range 1.45x-5.33x


def test_missing_measurements_are_not_measured_rather_than_failed() -> None:
    result = fake_result()
    del result["systems"]["ragserve"]["cold_start"]
    del result["footprint"]
    by_name = {c["name"]: c for c in report.checks(result)}
    assert by_name["ragserve: cold start (process start → /readyz 200)"]["pass"] is None
    md = report.render_markdown(result)
    assert "not measured" in md


def test_markdown_shows_checks_ratios_quality_and_the_command() -> None:
    md = report.render_markdown(fake_result(), ["docs/img/latency.png"])
    assert "`make bench  (= python -m bench.run_all)`" in md
    assert "2 cores, Test CPU" in md
    assert "| same model, dense vs dense: p50 latency at c16 | ≥ 3x lower | 5.00x" in md
    assert "**pass**" in md
    assert "0.645 / 0.925 (all-MiniLM-L6-v2, MTEB)" in md  # published next to measured
    # An image size estimated from the footprint is never reported as a pass.
    (row,) = [line for line in md.splitlines() if "image size estimate" in line]
    assert "~647 MB" in row and "estimate, not checked here" in row and "pass" not in row
    assert "![latency](img/latency.png)" in md
    assert "busy" not in md  # load average 0.9 max: no warning
    quick = fake_result()
    quick["meta"]["quick"] = True
    quick["meta"]["load_average_1m"] = spread(6, 4, 9)
    md = report.render_markdown(quick)
    assert "Quick run" in md and "machine was busy" in md


def test_select_corpus_keeps_judged_documents_and_order() -> None:
    docs = [{"id": str(i), "text": f"d{i}"} for i in range(10)]
    picked = select_corpus(docs, {"8", "9"}, 4)
    assert [d["id"] for d in picked] == ["0", "1", "8", "9"]
    assert len(select_corpus(docs, set(), 20)) == 10
    assert QUICK.docs == 1000 and QUICK.queries == 100


def test_summarize_runs_medians_and_errors() -> None:
    runs = [
        {"p50_ms": p, "p95_ms": p, "p99_ms": p, "throughput_rps": t, "errors": e, "ok": 5}
        | {"seconds": 1.0}
        for p, t, e in ((1.0, 10.0, {}), (3.0, 30.0, {"429": 2}), (2.0, 20.0, {"429": 1}))
    ]
    out = summarize_runs(runs)
    assert out["p50_ms"] == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": 3}
    assert out["throughput_rps"]["median"] == 20.0
    assert out["errors"] == {"429": 3} and out["ok"] == 15


def test_footprint_closure_follows_requirements() -> None:
    sizes = closure(["httpx"])
    assert {"httpx", "httpcore", "anyio"} <= set(sizes)
    assert all(mb >= 0 for mb in sizes.values())
    assert canonical("Sentence_Transformers") == "sentence-transformers"


def test_publish_writes_page_json_and_charts(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    paths = report.publish(fake_result(), tmp_path)
    names = {p.name for p in paths}
    assert {"benchmarks.md", "benchmarks.json", "latency.png", "throughput.png"} <= names
    assert {"quality.png", "memory.png"} <= names
    saved = json.loads((tmp_path / "benchmarks.json").read_text())
    assert saved["checks"] and saved["ratios"]
    assert (tmp_path / "img" / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_reference_index_is_exact_cosine_top_k() -> None:
    np = pytest.importorskip("numpy")
    from bench.reference_server import Index

    index = Index(3)
    assert index.search(np.array([1.0, 0.0, 0.0]), 5) == []
    vectors = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    index.add(["a", "b", "c", "d"], ["ta", "tb", "tc", "td"], vectors)
    found = index.search(np.array([0.8, 0.6, 0.0]), 3)
    assert [index.ids[i] for i, _ in found] == ["b", "a", "c"]
    assert found[0][1] == pytest.approx(0.96)
    assert len(index.search(np.array([0.0, 0.0, 1.0]), 10)) == 4
