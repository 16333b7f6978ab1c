"""``/mcp`` is mounted lazily: the MCP SDK loads on the first request that passes the key check,
and an API process that serves no agent never imports it (nor ONNX Runtime with remote models,
faiss before a collection needs an HNSW index, lxml before a DOCX).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes import make_service, make_settings, ready_client

KEY = "mcp-mount-key"
LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
#: What the streamable HTTP transport wants of a client (Accept) and the loopback Host its
#: DNS-rebinding protection allows on a server bound to 127.0.0.1.
MCP_HEADERS = {"accept": "application/json, text/event-stream", "host": "127.0.0.1:8000"}


def test_mcp_loads_on_first_use_and_then_serves(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=[KEY])
    for client in ready_client(settings, make_service(settings)):
        mount = client.app.state.mcp  # type: ignore[attr-defined]
        assert not mount.loaded
        refused = client.post("/mcp", json=LIST_TOOLS, headers=MCP_HEADERS)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "unauthorized"
        assert not mount.loaded  # a caller without a key does not load the SDK
        auth = {**MCP_HEADERS, "authorization": f"Bearer {KEY}"}
        for _ in range(2):  # the first request starts the session manager, the next reuse it
            r = client.post("/mcp", json=LIST_TOOLS, headers=auth)
            assert r.status_code == 200, r.text
            tools = {t["name"] for t in r.json()["result"]["tools"]}
            assert tools >= {"search", "list_collections", "get_document", "add_text"}
            assert mount.loaded
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "add_text", "arguments": {"collection": "kb", "text": "cats purr"}},
        }
        r = client.post("/mcp", json=call, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["result"]["structuredContent"]["status"] == "created"
        # the tool called the app it is mounted in
        assert client.get("/v1/collections/kb", headers=auth).json()["documents"] == 1


def test_mcp_is_served_again_after_a_restart_of_the_app(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    service = make_service(settings)
    from fastapi.testclient import TestClient

    from ragserve.api.app import create_app

    app = create_app(settings, service)
    try:
        for _ in range(2):  # each lifespan starts its own session manager
            with TestClient(app) as client:
                r = client.post("/mcp", json=LIST_TOOLS, headers=MCP_HEADERS)
                assert r.status_code == 200, r.text
    finally:
        service.close()


@pytest.mark.slow  # the embedder's tokenizer from the model cache
def test_an_api_process_with_remote_models_loads_only_what_it_uses(
    tmp_path: Path,
) -> None:
    code = f"""
import sys, time
from fastapi.testclient import TestClient
from ragserve.api.app import create_app
from ragserve.config import Settings

settings = Settings(role="api", data_dir={str(tmp_path / "data")!r},
                    embedder_url="http://127.0.0.1:9", reranker_url="http://127.0.0.1:9",
                    model_retries=0, embedder_timeout=1, reranker_timeout=1)
app = create_app(settings)
with TestClient(app) as client:
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.05)
    assert client.post("/v1/collections", json={{"name": "kb"}}).status_code == 201
    r = client.post("/v1/collections/kb/search", json={{"query": "x", "mode": "lexical"}})
    assert r.status_code == 200, r.text
unused = {{"mcp", "onnxruntime", "faiss", "lxml"}}  # faiss: no HNSW index; lxml: no DOCX
print(sorted({{m.split(".")[0] for m in sys.modules}} & unused))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
