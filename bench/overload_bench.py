"""Overload: many concurrent reranked searches against a real server; what is served, what is shed.

    flock /tmp/bench.lock python -m bench.overload_bench [--clients 128] [--seconds 60]
        [--data-dir DIR] [--docs 500] [--ignore-retry-after] [--set RAGSERVE_X=value ...]

Starts ``ragserve serve`` with the real default models (bge-small, the L-12 reranker; both
model caches off, so every search embeds and reranks), ingests the first ``--docs`` SciFact
documents over HTTP unless ``--data-dir`` already holds a ``scifact`` collection, then runs
``--clients`` concurrent clients (aiohttp, a process of their own) that send reranked hybrid
searches (SciFact test queries) back to back for ``--seconds``. After a 429 a client waits
``Retry-After`` (bounded by the time left), or retries at once with ``--ignore-retry-after``.
Meanwhile a thread of this process sends ``GET /healthz`` every 0.1 s. Prints one JSON object:
answers by status and their shares, p50/p99 latency of the 200s, the longest wait of any answer,
the Retry-After values seen, /healthz p50/p99/max, the server's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    ROOT,
    free_port,
    machine,
    ragserve_command,
    scifact_docs,
    scifact_test_queries,
    server,
)
from bench.loadgen import check_loopback
from bench.loadgen import percentile as _percentile


def percentile(values: list[float], q: float, digits: int = 1) -> float | None:
    """The q-quantile, rounded, or None (JSON null) for no values."""
    return round(_percentile(values, q), digits) if values else None


def ingest(url: str, docs: list[dict[str, str]], batch: int = 64) -> None:
    with httpx.Client(base_url=url, timeout=600) as client:
        if client.get("/v1/collections/scifact").status_code == 200:
            return
        client.post("/v1/collections", json={"name": "scifact"}).raise_for_status()
        for i in range(0, len(docs), batch):
            r = client.post(
                "/v1/collections/scifact/documents", json={"documents": docs[i : i + batch]}
            )
            r.raise_for_status()


async def _load(
    url: str, bodies: list[dict[str, Any]], clients: int, seconds: float, honour: bool
) -> dict[str, Any]:
    import aiohttp

    check_loopback(url)
    answers: list[tuple[str, float]] = []
    retry_after: list[int] = []
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(i: int) -> None:
            n = i
            while time.perf_counter() < stop:
                body = bodies[n % len(bodies)]
                n += clients
                started = time.perf_counter()
                try:
                    async with session.post(url, json=body) as r:
                        await r.read()
                        status, header = str(r.status), r.headers.get("retry-after")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, header = type(exc).__name__, None
                answers.append((status, time.perf_counter() - started))
                if status == "429":
                    wait = int(header) if header and header.isdigit() else 0
                    retry_after.append(wait)
                    if honour:
                        await asyncio.sleep(max(0.0, min(wait, stop - time.perf_counter())))

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    counts: dict[str, int] = {}
    for status, _ in answers:
        counts[status] = counts.get(status, 0) + 1
    ok = [s * 1000 for status, s in answers if status == "200"]
    return {
        "answers": len(answers),
        "by_status": counts,
        "share": {k: round(v / max(len(answers), 1), 3) for k, v in counts.items()},
        "seconds": round(elapsed, 1),
        "ok_per_second": round(len(ok) / elapsed, 2),
        "ok_p50_ms": percentile(ok, 0.5),
        "ok_p99_ms": percentile(ok, 0.99),
        "max_wait_ms": round(max((s for _, s in answers), default=0.0) * 1000, 1),
        "shed_p99_ms": percentile([s * 1000 for status, s in answers if status == "429"], 0.99),
        "retry_after_s": {
            "min": min(retry_after, default=0),
            "median": percentile([float(x) for x in retry_after], 0.5),
            "max": max(retry_after, default=0),
        },
    }


def _probe(url: str, stop: threading.Event, out: list[float], failures: list[str]) -> None:
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                r = client.get(url + "/healthz")
                if r.status_code != 200:
                    failures.append(str(r.status_code))
            except httpx.HTTPError as exc:
                failures.append(type(exc).__name__)
            out.append((time.perf_counter() - started) * 1000)
            stop.wait(0.1)


def run_load_process(
    url: str, bodies: list[dict[str, Any]], clients: int, seconds: float, honour: bool
) -> dict[str, Any]:
    """The clients in a process of their own (they must not share this process's GIL)."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.write("\n".join(json.dumps(b) for b in bodies))
        path = Path(fh.name)
    try:
        args = [sys.executable, "-m", "bench.overload_bench", "--load-only", url, str(path)]
        args += ["--clients", str(clients), "--seconds", str(seconds)]
        args += [] if honour else ["--ignore-retry-after"]
        proc = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT)
    finally:
        path.unlink(missing_ok=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--ignore-retry-after", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="RAGSERVE_X=value")
    parser.add_argument("--load-only", nargs=2, metavar=("URL", "BODIES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    seconds = min(args.seconds, 300.0)
    honour = not args.ignore_retry_after
    if args.load_only:
        url, path = args.load_only
        bodies = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
        print(json.dumps(asyncio.run(_load(url, bodies, args.clients, seconds, honour))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        port = free_port()
        env = {
            "PORT": str(port),
            "RAGSERVE_DATA_DIR": str(data_dir),
            "RAGSERVE_RERANKER_LOAD": "eager",
            "RAGSERVE_QUERY_CACHE_SIZE": "0",
            "RAGSERVE_RERANK_CACHE_SIZE": "0",
            "HF_HUB_OFFLINE": "1",
        }
        env.update(item.split("=", 1) for item in args.set)
        queries = scifact_test_queries()
        bodies = [{"query": q, "top_k": 10, "mode": "hybrid", "rerank": True} for q in queries]
        with server(ragserve_command(port), env) as srv:
            ingest(srv.url, scifact_docs(args.docs))
            health: list[float] = []
            failures: list[str] = []
            stop = threading.Event()
            prober = threading.Thread(target=_probe, args=(srv.url, stop, health, failures))
            prober.start()
            try:
                url = f"{srv.url}/v1/collections/scifact/search"
                load = run_load_process(url, bodies, args.clients, seconds, honour)
            finally:
                stop.set()
                prober.join()
            out = {
                "machine": machine(),
                "clients": args.clients,
                "honour_retry_after": honour,
                "settings": {k: v for k, v in env.items() if k.startswith("RAGSERVE_")}
                | {"RAGSERVE_DATA_DIR": "..."},
                **load,
                "healthz": {
                    "probes": len(health),
                    "failures": failures,
                    "p50_ms": percentile(health, 0.5),
                    "p99_ms": percentile(health, 0.99),
                    "max_ms": round(max(health, default=0.0), 1),
                },
                "server_rss_mb": round(srv.rss_mb(), 1),
            }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
