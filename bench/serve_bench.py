"""The service benchmark: cold start, HTTP ingest, search latency/throughput, memory, footprint.

    python -m bench.serve_bench [--quick] [--skip-footprint] [--data-dir DIR [--search-only]]

``--data-dir DIR``: a data directory that already holds SciFact (collection ``scifact``, e.g. left
by an earlier run's server, or ``ragserve ingest``): the server runs on a copy of it, and the HTTP
ingest (minutes on two cores) is skipped. ``--search-only``: cold starts, search without rerank
and RSS, no rerank load and no batching comparison: the figures two builds are compared on.

Everything runs on this machine against real ``ragserve serve`` processes on 127.0.0.1, with the
load generator (bench/loadgen.py) in a separate process. Prints JSON and writes
bench/out/serve_bench.json; docs/service.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    OUT,
    free_port,
    loadgen,
    machine,
    median_spread,
    ragserve_command,
    scifact_docs,
    scifact_test_queries,
    server,
)


def cold_starts(data_dir: Path, eager: bool, runs: int) -> dict[str, Any]:
    seconds = []
    for _ in range(runs):
        port = free_port()
        env = {
            "PORT": str(port),
            "RAGSERVE_DATA_DIR": str(data_dir),
            "RAGSERVE_RERANKER_LOAD": "eager" if eager else "lazy",
            "HF_HUB_OFFLINE": "1",
        }
        with server(ragserve_command(port), env) as srv:
            seconds.append(srv.ready_seconds)
    return median_spread(seconds)


def ingest(url: str, docs: list[dict[str, str]], batch: int = 64) -> dict[str, Any]:
    started = time.perf_counter()
    statuses: dict[str, int] = {}
    with httpx.Client(timeout=600) as client:
        r = client.post(f"{url}/v1/collections", json={"name": "scifact"})
        r.raise_for_status()
        for i in range(0, len(docs), batch):
            r = client.post(
                f"{url}/v1/collections/scifact/documents", json={"documents": docs[i : i + batch]}
            )
            r.raise_for_status()
            for res in r.json()["results"]:
                statuses[res["status"]] = statuses.get(res["status"], 0) + 1
        info = client.get(f"{url}/v1/collections/scifact").json()
    elapsed = time.perf_counter() - started
    return {
        "documents": len(docs),
        "chunks": info["chunks"],
        "seconds": round(elapsed, 1),
        "documents_per_s": round(len(docs) / elapsed, 1),
        "statuses": statuses,
    }


def load_runs(url: str, queries: list[str], rerank: bool, quick: bool) -> dict[str, Any]:
    bodies = [{"query": q, "top_k": 10, "mode": "hybrid", "rerank": rerank} for q in queries]
    endpoint = f"{url}/v1/collections/scifact/search"
    out: dict[str, Any] = {}
    # Warm-up (first requests load the reranker lazily, fill caches).
    loadgen(endpoint, bodies[:20], concurrency=2, requests=20, seconds=120)
    n1 = (60 if rerank else 200) // (2 if quick else 1)
    out["c1"] = loadgen(endpoint, bodies, concurrency=1, requests=n1, seconds=120)
    for conc in (4, 16):
        n = (200 if rerank else 3000) // (2 if quick else 1)
        out[f"c{conc}"] = loadgen(endpoint, bodies, concurrency=conc, requests=n, seconds=60)
    return out


def batching_effect(data_dir: Path, queries: list[str], quick: bool) -> dict[str, Any]:
    """Search at concurrency 16 with cross-request batching (default) and without (batch of 1).

    Same data directory (already ingested), same queries; only RAGSERVE_MAX_BATCH_SIZE differs.
    """
    bodies = [{"query": q, "top_k": 10, "mode": "hybrid"} for q in queries]
    out: dict[str, Any] = {}
    for label, size in (("batched", "64"), ("unbatched", "1")):
        port = free_port()
        env = {
            "PORT": str(port),
            "RAGSERVE_DATA_DIR": str(data_dir),
            "RAGSERVE_MAX_BATCH_SIZE": size,
            "RAGSERVE_QUERY_CACHE_SIZE": "0",
            "HF_HUB_OFFLINE": "1",
        }
        with server(ragserve_command(port), env) as srv:
            endpoint = f"{srv.url}/v1/collections/scifact/search"
            loadgen(endpoint, bodies[:20], concurrency=2, requests=20, seconds=60)
            n = 1000 if quick else 3000
            out[label] = loadgen(endpoint, bodies, concurrency=16, requests=n, seconds=60)
    out["throughput_ratio"] = round(
        out["batched"]["throughput_rps"] / max(out["unbatched"]["throughput_rps"], 1e-9), 2
    )
    return out


def footprint() -> dict[str, Any]:
    """Installed runtime (a fresh venv with `pip install .`, no extras, minus what the
    Dockerfile removes) plus the default models."""
    from ragserve.config import Settings

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="ragserve-footprint-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, str(root)], check=True, capture_output=True)
        # As the Dockerfile's build stage leaves it: no installer (bytecode kept).
        python = str(venv / "bin" / "python")
        subprocess.run(
            [python, "-m", "pip", "uninstall", "--quiet", "-y", "pip", "setuptools"],
            check=True,
            capture_output=True,
        )
        site = next(venv.glob("lib/python*/site-packages"))
        packages = _du(site)
        biggest = sorted(
            ((p.name, _du(p)) for p in site.iterdir() if p.is_dir()), key=lambda x: -x[1]
        )[:10]
    s = Settings()
    models = sum(_du(s.model_dir / name) for name in (s.embedder, s.reranker))
    return {
        "site_packages_mb": round(packages, 1),
        "models_mb": round(models, 1),
        "total_mb": round(packages + models, 1),
        "largest_packages_mb": {name: round(mb, 1) for name, mb in biggest},
        "note": "runtime stage = python:3.11-slim base + these; the base image is not counted",
    }


def _du(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer runs and requests")
    parser.add_argument("--skip-footprint", action="store_true")
    parser.add_argument("--data-dir", type=Path, help="SciFact already ingested: skip the ingest")
    parser.add_argument(
        "--search-only", action="store_true", help="no rerank load, no batching comparison"
    )
    args = parser.parse_args()
    runs = 3 if args.quick else 5
    result: dict[str, Any] = {"machine": machine(), "command": "python -m bench.serve_bench"}
    with tempfile.TemporaryDirectory(prefix="ragserve-bench-") as tmp:
        data = Path(tmp)
        result["cold_start_s"] = {
            "lazy_reranker": cold_starts(data / "cold", eager=False, runs=runs),
            "eager_reranker": cold_starts(data / "cold", eager=True, runs=runs),
        }
        print(json.dumps(result["cold_start_s"]), file=sys.stderr)
        port = free_port()
        # Caches off: 300 queries cycle through thousands of requests, and every figure here is
        # meant to be model + index work, not cache hits.
        env = {
            "PORT": str(port),
            "RAGSERVE_DATA_DIR": str(data / "main"),
            "RAGSERVE_QUERY_CACHE_SIZE": "0",
            "RAGSERVE_RERANK_CACHE_SIZE": "0",
            "HF_HUB_OFFLINE": "1",
        }
        if args.data_dir is not None:
            shutil.copytree(args.data_dir, data / "main")
        OUT.mkdir(parents=True, exist_ok=True)
        with server(ragserve_command(port), env, log=OUT / "serve_bench.log") as srv:
            if args.data_dir is None:
                result["ingest"] = ingest(srv.url, scifact_docs())
                result["rss_after_ingest_mb"] = round(srv.rss_mb(), 1)
                print(json.dumps(result["ingest"]), file=sys.stderr)
            else:
                result["rss_at_ready_mb"] = round(srv.rss_mb(), 1)
            queries = scifact_test_queries()
            result["search"] = load_runs(srv.url, queries, rerank=False, quick=args.quick)
            print(json.dumps(result["search"]), file=sys.stderr)
            if not args.search_only:
                result["search_rerank"] = load_runs(srv.url, queries, rerank=True, quick=args.quick)
            result["rss_after_load_mb"] = round(srv.rss_mb(), 1)
        if not args.search_only:
            result["dynamic_batching"] = batching_effect(data / "main", queries, args.quick)
    if not args.skip_footprint:
        result["footprint"] = footprint()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve_bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
