"""Search throughput and CPU cost per request against an already ingested data directory.

    python -m bench.search_probe --data-dir DIR [--collection scifact] [--concurrency 1 16]
        [--requests 2000] [--mode hybrid] [--rerank] [--set RAGSERVE_X=value ...]
        [--variant NAME='{"explain": true}' ... [--rounds 3]]

Starts ``ragserve serve`` on DIR (query and rerank caches off unless ``--set`` says otherwise),
warms it up, then runs the load generator (bench/loadgen.py, its own process) once per
concurrency and prints, per run: throughput, p50/p99, errors, and the CPU time the server and
the load generator spent per request (from /proc and the child's rusage). ``--variant`` adds
request options (JSON merged into every body); several variants run interleaved on the same
server, ``--rounds`` times each, and a last line gives each variant's median p50. The quick way to
compare one setting against another; ``bench.serve_bench`` is the full benchmark (it ingests).
DIR must hold a collection made from the SciFact corpus (e.g. by ``ragserve eval`` or
``bench.serve_bench``'s ingest); the queries are SciFact's test queries.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
from pathlib import Path

from bench.common import free_port, loadgen, ragserve_command, scifact_test_queries, server


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--collection", default="scifact")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--mode", default="hybrid", choices=["hybrid", "dense", "lexical"])
    parser.add_argument("--rerank", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="RAGSERVE_X=value")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    port = free_port()
    env = {
        "PORT": str(port),
        "RAGSERVE_DATA_DIR": str(args.data_dir),
        "RAGSERVE_QUERY_CACHE_SIZE": "0",
        "RAGSERVE_RERANK_CACHE_SIZE": "0",
        "HF_HUB_OFFLINE": "1",
    }
    env.update(item.split("=", 1) for item in args.set)
    queries = scifact_test_queries()
    bodies = [{"query": q, "top_k": 10, "mode": args.mode, "rerank": args.rerank} for q in queries]
    variants = {"": {}} if not args.variant else {}
    for item in args.variant:
        name, _, options = item.partition("=")
        variants[name] = json.loads(options or "{}")
    p50s: dict[str, list[float]] = {}
    with server(ragserve_command(port), env) as srv:
        url = f"{srv.url}/v1/collections/{args.collection}/search"
        loadgen(url, bodies[:50], concurrency=4, requests=50, seconds=120)  # warm-up
        runs = [(c, n, o) for c in args.concurrency for _ in range(args.rounds)
                for n, o in variants.items()]  # fmt: skip
        for conc, name, options in runs:
            run_bodies = [{**b, **options} for b in bodies]
            server_cpu, loadgen_cpu = process_cpu_seconds(srv.proc.pid), children_cpu_seconds()
            run = loadgen(url, run_bodies, concurrency=conc, requests=args.requests, seconds=120)
            ok = max(run["ok"], 1)
            server_ms = (process_cpu_seconds(srv.proc.pid) - server_cpu) * 1000 / ok
            loadgen_ms = (children_cpu_seconds() - loadgen_cpu) * 1000 / ok
            p50s.setdefault(f"{name or 'default'} c{conc}", []).append(run["p50_ms"])
            out = {
                **({"variant": name} if name else {}),
                "concurrency": conc,
                **{k: run[k] for k in ("ok", "errors", "throughput_rps", "p50_ms", "p99_ms")},
                "server_cpu_ms_per_request": round(server_ms, 2),
                "loadgen_cpu_ms_per_request": round(loadgen_ms, 2),
                "server_rss_mb": round(srv.rss_mb(), 1),
            }
            print(json.dumps(out), flush=True)
    if len(variants) > 1 or args.rounds > 1:
        medians = {name: statistics.median(v) for name, v in p50s.items()}
        print(json.dumps({"median_p50_ms": medians}), flush=True)


if __name__ == "__main__":
    main()
