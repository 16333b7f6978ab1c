"""MCP with the SDK's own client: streamable HTTP at /mcp of a real `ragserve serve` (keys set),
and `ragserve mcp` over stdio (against that server, and on its own over a data directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from ragserve.client import Client as RagClient
from tests.test_server_e2e import DOCS, run_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "mcp-test-key"
TOOLS = {"search", "list_collections", "get_document", "add_text"}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_server(tmp_path_factory.mktemp("mcp"), api_keys=f'["{KEY}"]') as base:
        with RagClient(base, api_key=KEY) as rs:
            rs.create_collection("kb")
            rs.add_documents("kb", DOCS)
        yield base


@asynccontextmanager
async def _http(url: str, key: str | None) -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP, with the key in an Authorization header."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        yield client


async def _exercise(client: Client) -> None:
    """What every transport must do: the tools, a search with the expected hit, a document."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) >= TOOLS
    search = tools["search"]
    assert "example" in (search.description or "").lower()
    props = search.input_schema["properties"]
    assert {"collection", "query", "mode", "top_k", "rerank", "filter"} <= set(props)
    assert all(props[p].get("description") for p in ("query", "mode", "filter"))

    result = await client.call_tool(
        "search", {"collection": "kb", "query": "how many hearts does an octopus have", "top_k": 2}
    )
    assert not result.is_error, result.content
    hits = result.structured_content["hits"]
    assert hits[0]["document_id"] == "octopus" and "three hearts" in hits[0]["text"]
    assert hits[0]["source"] == "octopus" and hits[0]["score"] > 0

    lexical = await client.call_tool(
        "search", {"collection": "kb", "query": "yeast", "mode": "lexical", "rerank": True}
    )
    assert lexical.structured_content["hits"][0]["document_id"] == "bread"

    listed = (await client.call_tool("list_collections", {})).structured_content
    assert {"name": "kb", "documents": 3}.items() <= listed["collections"][0].items()
    doc = await client.call_tool("get_document", {"collection": "kb", "document_id": "rust"})
    assert doc.structured_content["text"] == DOCS[1]["text"]
    missing = await client.call_tool("get_document", {"collection": "kb", "document_id": "nope"})
    assert missing.is_error and "document_not_found" in str(missing.content)


def test_streamable_http_at_mcp(url: str) -> None:
    async def scenario() -> None:
        async with _http(url, KEY) as client:
            await _exercise(client)
            added = await client.call_tool(
                "add_text",
                {"collection": "notes", "text": "The staging database moved to db2.", "id": "n1"},
            )
            assert added.structured_content == {
                "id": "n1", "status": "created", "chunks": 1, "error": None
            }  # fmt: skip
            found = await client.call_tool(
                "search", {"collection": "notes", "query": "where is the staging database"}
            )
            assert found.structured_content["hits"][0]["document_id"] == "n1"

    anyio.run(scenario)


def test_without_a_key_mcp_is_refused(url: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    for headers in ({}, {"authorization": "Bearer wrong"}):
        r = httpx.post(f"{url}/mcp", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"

    async def scenario() -> None:
        async with _http(url, None) as client:
            await client.list_tools()

    with pytest.raises(ExceptionGroup) as refused:  # the SDK's error for a 401 answer
        anyio.run(scenario)
    assert refused.group_contains(MCPError)


def _stdio(*args: str, data_dir: Path | None = None) -> StdioServerParameters:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGSERVE_RERANKER_LOAD": "lazy"}
    if data_dir is not None:
        env["RAGSERVE_DATA_DIR"] = str(data_dir)
    return StdioServerParameters(command=sys.executable, args=["-m", "ragserve.cli", "mcp", *args],
                                 env=env)  # fmt: skip


def test_stdio_against_a_running_server(url: str) -> None:
    async def scenario() -> None:
        async with Client(_stdio("--url", url, "--api-key", KEY)) as client:
            await _exercise(client)

    anyio.run(scenario)


def test_stdio_on_its_own_data_directory(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Client(_stdio(data_dir=tmp_path / "data")) as client:
            for d in DOCS:
                added = await client.call_tool(
                    "add_text", {"collection": "kb", "text": d["text"], "id": d["id"]}
                )
                assert added.structured_content["status"] == "created", added.content
            await _exercise(client)

    anyio.run(scenario)


def test_stdio_that_cannot_start_says_why_and_exits(tmp_path: Path) -> None:
    params = _stdio(data_dir=tmp_path / "data")
    env = {**(params.env or {}), "RAGSERVE_EMBEDDER": "e5-small-v2",
           "RAGSERVE_MODEL_DIR": str(tmp_path / "no-models")}  # fmt: skip
    done = subprocess.run(
        [params.command, *params.args], env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    said = " ".join(done.stderr.split())  # rich wraps long lines
    assert "start-up failed" in said and "ragserve models pull e5-small-v2" in said
    assert done.stdout == ""  # nothing but MCP messages ever goes to stdout


def test_serving_mcp_leaves_the_process_logging_alone(tmp_path: Path) -> None:
    code = f"""
import logging
from fastapi.testclient import TestClient
from ragserve.api.app import create_app
from tests.fakes import make_service, make_settings

settings = make_settings(__import__("pathlib").Path({str(tmp_path)!r}))
service = make_service(settings)
with TestClient(create_app(settings, service)) as client:  # the SDK loads on first use
    body = {{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {{}}}}
    headers = {{"accept": "application/json, text/event-stream", "host": "127.0.0.1:8000"}}
    assert client.post("/mcp", json=body, headers=headers).status_code == 200
service.close()
r = logging.getLogger()
print(r.handlers, logging.getLevelName(r.level))
"""
    root = Path(__file__).parent.parent  # tests.fakes
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip().splitlines()[-1] == "[] WARNING"  # as Python leaves it


def test_a_models_process_serves_neither_mcp_nor_the_console(tmp_path: Path) -> None:
    from ragserve.api.app import create_app
    from ragserve.config import Settings

    def paths(role: str) -> set[str]:
        app = create_app(Settings(role=role, data_dir=tmp_path / role))
        return {getattr(r, "path", "") for r in app.routes}

    assert {"/mcp", "/ui"} <= paths("all")
    assert not {"/mcp", "/ui"} & paths("models")
