"""A bounded HTTP load generator, run as its own process so it does not share the server's GIL.

    python -m bench.loadgen --url http://127.0.0.1:8000/v1/collections/c/search \
        --bodies bodies.jsonl --concurrency 16 --requests 2000 --seconds 30

Sends POSTs with JSON bodies taken round-robin from ``--bodies`` (one JSON object a line) from
``--concurrency`` workers, stopping after ``--requests`` requests or ``--seconds`` seconds,
whichever comes first. Only loopback addresses are accepted. Prints one JSON object: count,
errors by status, throughput, latency percentiles (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(latencies: list[float], errors: dict[str, int], elapsed: float) -> dict[str, Any]:
    ok = len(latencies)
    return {
        "requests": ok + sum(errors.values()),
        "ok": ok,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(ok / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p95_ms": round(percentile(latencies, 0.95), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "mean_ms": round(sum(latencies) / ok, 2) if ok else float("nan"),
    }


def check_loopback(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing to load a non-loopback address: {host}")


async def run(
    url: str, bodies: list[dict[str, Any]], concurrency: int, requests: int, seconds: float
) -> dict[str, Any]:
    check_loopback(url)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.perf_counter() + seconds
    payloads = [json.dumps(b).encode() for b in bodies]
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60.0)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def worker() -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() < deadline:
                payload = payloads[issued % len(payloads)]
                issued += 1
                t = time.perf_counter()
                try:
                    async with client.post(url, data=payload, headers=headers) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if status == 200:
                    latencies.append((time.perf_counter() - t) * 1000)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summarize(latencies, errors, elapsed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    bodies = [json.loads(line) for line in args.bodies.read_text().splitlines() if line.strip()]
    result = asyncio.run(
        run(args.url, bodies, args.concurrency, min(args.requests, 100_000), min(args.seconds, 600))
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
