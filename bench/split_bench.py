"""Models as a separate service: one `--role all` process against `--role api` + `--role models`.

    python -m bench.split_bench [--rounds N]

SciFact is ingested once over HTTP through the split pair (api -> models server); then, in
interleaved rounds on that same data directory, an `all` process and an `api` process (its models
on the running `models` process) each serve hybrid searches (top_k 10, caches off on every
process) at concurrency 1 and 16 from bench/loadgen.py in its own process. Prints JSON and writes
bench/out/split_bench.json; docs/deployment.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    OUT,
    free_port,
    loadgen,
    machine,
    ragserve_command,
    scifact_docs,
    scifact_test_queries,
    server,
)
from bench.serve_bench import ingest

#: Seconds after the ingest before its RSS is read: the process gives what the ingest freed
#: back to the system 1 s after the last write (ragserve.memory.TRIM_DELAY).
SETTLE = 3.0
NO_CACHES = {"RAGSERVE_QUERY_CACHE_SIZE": "0", "RAGSERVE_RERANK_CACHE_SIZE": "0"}


def role_command(port: int, role: str) -> list[str]:
    return [*ragserve_command(port), "--role", role]


def searches(url: str, queries: list[str], c16_requests: int) -> dict[str, Any]:
    bodies = [{"query": q, "top_k": 10, "mode": "hybrid"} for q in queries]
    endpoint = f"{url}/v1/collections/scifact/search"
    loadgen(endpoint, bodies[:20], concurrency=2, requests=20, seconds=60)  # warm-up
    return {
        "c1": loadgen(endpoint, bodies, concurrency=1, requests=200, seconds=120),
        "c16": loadgen(endpoint, bodies, concurrency=16, requests=c16_requests, seconds=120),
    }


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--c16-requests", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=None, help="first N SciFact documents")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "machine": machine(),
        "command": f"python -m bench.split_bench --rounds {args.rounds}",
        "load_average_start": os.getloadavg()[0],
    }
    queries = scifact_test_queries()
    with tempfile.TemporaryDirectory(prefix="ragserve-split-") as tmp:
        data = str(Path(tmp) / "data")
        mport = free_port()
        models_env = {"PORT": str(mport), "RAGSERVE_DATA_DIR": str(Path(tmp) / "m"),
                      "HF_HUB_OFFLINE": "1", **NO_CACHES}  # fmt: skip
        with server(role_command(mport, "models"), models_env) as models:
            remote = {
                "RAGSERVE_EMBEDDER_URL": models.url,
                "RAGSERVE_RERANKER_URL": models.url,
                # A shared 2-core machine may be 10x oversubscribed: the figures are about the
                # hop, not about failing over (bench/out/split_bench.json records the load).
                "RAGSERVE_EMBEDDER_TIMEOUT": "120",
                "RAGSERVE_RERANKER_TIMEOUT": "120",
            }

            def env(port: int, split: bool) -> dict[str, str]:
                extra = remote if split else {}
                return {"PORT": str(port), "RAGSERVE_DATA_DIR": data, "HF_HUB_OFFLINE": "1",
                        **NO_CACHES, **extra}  # fmt: skip

            port = free_port()
            with server(role_command(port, "api"), env(port, True)) as api:
                result["api_rss_at_start_mb"] = round(api.rss_mb(), 1)
                result["ingest_split"] = ingest(api.url, scifact_docs(args.docs))
                result["api_rss_right_after_ingest_mb"] = round(api.rss_mb(), 1)
                time.sleep(SETTLE)  # what the ingest freed goes back (ragserve.memory)
                result["api_rss_after_ingest_mb"] = round(api.rss_mb(), 1)
                result["models_rss_after_ingest_mb"] = round(models.rss_mb(), 1)
            print(json.dumps(result), file=sys.stderr)
            rounds: dict[str, list[dict[str, Any]]] = {"all": [], "split": []}
            rss: dict[str, list[float]] = {"all": [], "split": []}
            for _ in range(args.rounds):
                for label in ("all", "split"):
                    port = free_port()
                    role = "api" if label == "split" else "all"
                    with server(role_command(port, role), env(port, label == "split")) as srv:
                        run = searches(srv.url, queries, args.c16_requests)
                        rss[label].append(srv.rss_mb())
                    rounds[label].append(run)
                    print(label, json.dumps(run), file=sys.stderr)
                    time.sleep(1)
            result["models_rss_after_load_mb"] = round(models.rss_mb(), 1)
    summary: dict[str, Any] = {}
    for label, runs in rounds.items():
        summary[label] = {
            "c1_p50_ms": median([r["c1"]["p50_ms"] for r in runs]),
            "c16_p50_ms": median([r["c16"]["p50_ms"] for r in runs]),
            "c16_throughput_rps": median([r["c16"]["throughput_rps"] for r in runs]),
            "rss_after_load_mb": median(rss[label]),
            "c1_p50_ms_runs": [r["c1"]["p50_ms"] for r in runs],
            "c16_throughput_rps_runs": [r["c16"]["throughput_rps"] for r in runs],
        }
    summary["added_ms_per_search"] = {
        "c1_p50": round(summary["split"]["c1_p50_ms"] - summary["all"]["c1_p50_ms"], 2),
        "c16_p50": round(summary["split"]["c16_p50_ms"] - summary["all"]["c16_p50_ms"], 2),
    }
    result["searches"] = summary
    result["load_average_end"] = os.getloadavg()[0]
    result["runs"] = rounds
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "split_bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
