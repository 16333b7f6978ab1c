"""What a search costs through each way in: raw HTTP, ragserve.client, MCP at /mcp, MCP over
stdio (``ragserve mcp --url``), against one real ``ragserve serve`` (bge-small, hybrid, top_k 5,
query cache off so every search embeds its query).

Sequential searches (one at a time: the latency a single agent or script sees), the same queries
for every way, the ways interleaved round by round; medians per way over all searches.

    python -m bench.client_overhead [--docs 500 --queries 40 --rounds 3 --eval-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
from mcp import Client as McpClient
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from bench.common import EVAL_DIR, free_port, machine, ragserve_command, server
from ragserve.client import AsyncClient, Client

Search = Callable[[str], Awaitable[Any]]


def _lines(path: Path, n: int) -> list[dict[str, Any]]:
    out = []
    with path.open() as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


async def _time(search: Search, queries: list[str]) -> list[float]:
    out = []
    for q in queries:
        t = time.perf_counter()
        await search(q)
        out.append((time.perf_counter() - t) * 1000)
    return out


async def run(url: str, queries: list[str], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    body = {"top_k": 5, "mode": "hybrid"}
    env = {"HF_HUB_OFFLINE": "1"}
    stdio = StdioServerParameters(
        command=sys.executable, args=["-m", "ragserve.cli", "mcp", "--url", url], env=env
    )
    async with (
        httpx.AsyncClient(base_url=url, timeout=60) as raw,
        AsyncClient(url) as client,
        httpx2.AsyncClient(timeout=60) as h2,
        McpClient(streamable_http_client(f"{url}/mcp", http_client=h2)) as mcp_http,
        McpClient(stdio) as mcp_stdio,
    ):

        async def raw_search(q: str) -> Any:
            r = await raw.post("/v1/collections/bench/search", json={"query": q, **body})
            r.raise_for_status()

        async def client_search(q: str) -> Any:
            await client.search("bench", q, top_k=5, mode="hybrid")

        def tool(mcp: McpClient) -> Search:
            async def call(q: str) -> Any:
                result = await mcp.call_tool("search", {"collection": "bench", "query": q, **body})
                assert not result.is_error, result.content

            return call

        ways: dict[str, Search] = {
            "http (httpx)": raw_search,
            "ragserve.client": client_search,
            "mcp /mcp (streamable HTTP)": tool(mcp_http),
            "mcp stdio --url": tool(mcp_stdio),
        }
        for way in ways.values():  # warm-up: connections, the stdio process, first calls
            await _time(way, queries[:3])
        for _ in range(rounds):
            for name, way in ways.items():
                times.setdefault(name, []).extend(await _time(way, queries))
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=500)
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--eval-dir", type=Path, default=EVAL_DIR, help="A BEIR dataset (SciFact).")
    args = p.parse_args(argv)
    docs = [
        {"id": d["_id"], "title": d.get("title") or None, "text": d["text"]}
        for d in _lines(args.eval_dir / "corpus.jsonl", args.docs)
    ]
    queries = [q["text"] for q in _lines(args.eval_dir / "queries.jsonl", args.queries)]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "PORT": str(port),
            "RAGSERVE_DATA_DIR": tmp,
            "RAGSERVE_QUERY_CACHE_SIZE": "0",
            "RAGSERVE_RERANKER_LOAD": "lazy",
            "HF_HUB_OFFLINE": "1",
        }
        with server(ragserve_command(port), env) as srv, Client(srv.url, timeout=600) as rs:
            rs.create_collection("bench")
            for i in range(0, len(docs), 100):
                rs.add_documents("bench", docs[i : i + 100])
            times = asyncio.run(run(srv.url, queries, args.rounds))
    print(
        json.dumps(
            {
                "machine": machine(),
                "docs": len(docs),
                "queries": len(queries),
                "rounds": args.rounds,
                "median_ms": {k: round(statistics.median(v), 2) for k, v in times.items()},
                "p90_ms": {
                    k: round(statistics.quantiles(v, n=10)[-1], 2) for k, v in times.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
