"""What observability costs per request: the same app with and without it, in process.

    python -m bench.metrics_overhead [--requests 2000] [--rounds 7]

Two apps over the same kind of service (real SQLite store, fake models, so the figure is not
drowned in model time): ``create_app(..., observability=False)`` and the default app, which adds
the ASGI middleware (request id, route-template and stage histograms, recent-latency windows,
error counting, one JSON access-log line per request, written to /dev/null through a real
handler) and ``/metrics``. Requests go through httpx's ASGI transport in one event loop, one at a
time, so the difference between the two is the middleware's own CPU time, not queueing.

Each round sends the same request mix (hybrid searches and /healthz) to both apps, request by
request (each request to both, back to back, alternating which goes first, so the load of a
busy machine hits both alike); the "on" app is also scraped (``GET /metrics``) every 100
requests, a hundred times more often than a Prometheus scraping every 15 s at 100 req/s, and
those scrapes are counted in its time. Overhead per request = (time on - time off) / requests,
a mean; the median over rounds is the figure. On a busy machine that figure carries the noise of
thread hand-offs, so the middleware is also timed alone: around a trivial ASGI app that answers
at once, against the bare app (``middleware_alone``). Prints JSON; docs/monitoring.md quotes
it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from bench.common import OUT, machine, median_spread
from ragserve.api.app import create_app
from ragserve.api.observability import ACCESS_LOGGER, ObservabilityMiddleware
from ragserve.caching import ModelCaches
from ragserve.metrics import Metrics
from ragserve.service import RetrievalService
from tests.fakes import make_service, make_settings

WORDS = [
    "cats",
    "dogs",
    "barn",
    "mice",
    "pond",
    "fish",
    "owls",
    "hunt",
    "chase",
    "purr",
    "swim",
    "bark",
    "mail",
    "carrier",
    "night",
]
SCRAPE_EVERY = 100


def _docs(n: int = 200) -> list[dict[str, Any]]:
    return [
        {
            "id": f"d{i}",
            "title": f"doc {i}",
            "text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40)),
        }
        for i in range(n)
    ]


async def _prepare(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        if not (await client.post("/v1/collections", json={"name": "docs"})).is_success:
            raise RuntimeError("cannot create the collection")
        r = await client.post("/v1/collections/docs/documents", json={"documents": _docs()})
        if not r.is_success:
            raise RuntimeError(r.text)


async def _request(client: httpx.AsyncClient, i: int) -> float:
    """One request of the mix; its time in ms."""
    t = time.perf_counter()
    if i % 2:
        r = await client.get("/healthz")
    else:
        query = f"{WORDS[i % len(WORDS)]} {WORDS[(i // 3) % len(WORDS)]}"
        r = await client.post("/v1/collections/docs/search", json={"query": query})
    elapsed = (time.perf_counter() - t) * 1000
    if r.status_code != 200:
        raise RuntimeError(r.text)
    return elapsed


async def _round(clients: dict[str, httpx.AsyncClient], requests: int) -> dict[str, Any]:
    """Request i goes to both apps back to back (alternating which goes first), so a change in
    machine load hits both alike; the "on" app is scraped every SCRAPE_EVERY requests."""
    total = {"off": 0.0, "on": 0.0}
    scrapes: list[float] = []
    for i in range(requests):
        for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
            total[name] += await _request(clients[name], i)
        if i % SCRAPE_EVERY == SCRAPE_EVERY - 1:
            t = time.perf_counter()
            m = await clients["on"].get("/metrics")
            scrapes.append((time.perf_counter() - t) * 1000)
            if m.status_code != 200:
                raise RuntimeError(m.text)
            total["on"] += scrapes[-1]
    return {"off": total["off"] / requests, "on": total["on"] / requests, "scrapes": scrapes}


async def _bench(apps: dict[str, FastAPI], requests: int, rounds: int) -> dict[str, Any]:
    results: dict[str, list[float]] = {"off": [], "on": []}
    scrape_ms: list[float] = []
    clients = {
        name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
        for name, app in apps.items()
    }
    try:
        for app in apps.values():
            app.state.readiness.ready = True  # the service passed in is ready as it is
            await _prepare(app)
        await _round(clients, 200)  # warm up: caches, code paths, sqlite pages
        for _ in range(rounds):
            figures = await _round(clients, requests)
            results["off"].append(figures["off"])
            results["on"].append(figures["on"])
            scrape_ms.extend(figures["scrapes"])
    finally:
        for client in clients.values():
            await client.aclose()
    overheads = [on - off for on, off in zip(results["on"], results["off"], strict=True)]
    return {
        "requests_per_round": requests,
        "rounds": rounds,
        "mix": "1:1 hybrid search (fake models, 200 docs) and /healthz, sequential",
        "ms_per_request_without": median_spread(results["off"]),
        "ms_per_request_with": median_spread(results["on"]),
        "overhead_ms_per_request": median_spread(overheads),
        "scrape_every_requests": SCRAPE_EVERY,
        "scrape_ms": median_spread(scrape_ms),
    }


async def _middleware_alone(calls: int, rounds: int) -> dict[str, Any]:
    """The middleware's own CPU time per request: around a trivial ASGI app that answers at
    once (with a search's stage timings and a cache tally), against that app alone."""

    class _Route:
        path = "/v1/collections/{name}/search"

    stages = {"embed": 3.1, "dense": 0.4, "lexical": 0.6, "fuse": 0.1, "rerank": 0.0, "total": 4.4}
    caches = ModelCaches(16, 0)

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = _Route
        scope.setdefault("state", {})["timings_ms"] = stages
        caches.queries.get_many([("m", "q")])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    wrapped = ObservabilityMiddleware(inner, Metrics(), logging.getLogger(ACCESS_LOGGER))
    per_call: dict[str, list[float]] = {"bare": [], "observed": []}
    for _ in range(rounds):
        for name, app in (("bare", inner), ("observed", wrapped)):
            started = time.perf_counter()
            for _ in range(calls):
                scope = {
                    "type": "http",
                    "method": "POST",
                    "path": "/v1/collections/docs/search",
                    "headers": [(b"x-request-id", b"bench")],
                }
                await app(scope, receive, send)
            per_call[name].append((time.perf_counter() - started) / calls * 1e6)
    diffs = [o - b for o, b in zip(per_call["observed"], per_call["bare"], strict=True)]
    return {"calls_per_round": calls, "middleware_us_per_request": median_spread(diffs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    # A real handler, so the figure includes formatting and writing each access-log line.
    sink = Path("/dev/null").open("w")  # noqa: SIM115 - closed below
    access = logging.getLogger(ACCESS_LOGGER)
    access.addHandler(logging.StreamHandler(sink))
    access.setLevel(logging.INFO)
    access.propagate = False

    services: list[RetrievalService] = []
    apps: dict[str, FastAPI] = {}
    with tempfile.TemporaryDirectory(prefix="ragserve-overhead-") as tmp:
        for name in ("off", "on"):
            settings = make_settings(Path(tmp) / name, max_documents_per_request=1000)
            service = make_service(settings)
            services.append(service)
            apps[name] = create_app(settings, service, observability=name == "on")
        try:
            figures = anyio.run(_bench, apps, args.requests, args.rounds)
            figures["middleware_alone"] = anyio.run(_middleware_alone, 20_000, args.rounds)
        finally:
            for service in services:
                service.close()
            sink.close()
    out = {
        "benchmark": "metrics_overhead",
        "machine": machine(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        **figures,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "metrics_overhead.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
