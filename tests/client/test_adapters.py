"""The LangChain and LlamaIndex retrievers, each through its real library, against the real app
on uvicorn (fake models); and neither library is imported by ragserve.client itself."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragserve.client import AsyncClient, Client
from tests.api.test_http_edges import live_server
from tests.fakes import make_service, make_settings

pytestmark = pytest.mark.integration

DOCS = [
    {"id": "octopus", "text": "An octopus has three hearts and blue blood.", "metadata": {"k": 1}},
    {"id": "bread", "text": "Sourdough bread rises thanks to wild yeast.", "metadata": {"k": 2}},
]


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    settings = make_settings(tmp_path)
    with live_server(settings, make_service(settings)) as http:
        with Client(str(http.base_url)) as rs:
            rs.create_collection("kb")
            rs.add_documents("kb", DOCS)
        yield str(http.base_url)


def test_langchain_retriever(url: str) -> None:
    pytest.importorskip("langchain_core", reason="the [langchain] extra is not installed")
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from ragserve.client.langchain import RagserveRetriever

    with Client(url) as rs:
        retriever = RagserveRetriever(client=rs, collection="kb", search_kwargs={"top_k": 1})
        assert isinstance(retriever, BaseRetriever)
        docs = retriever.invoke("octopus hearts")
    assert len(docs) == 1 and isinstance(docs[0], Document)
    assert docs[0].page_content.startswith("An octopus has three hearts")
    assert docs[0].metadata["document_id"] == "octopus" and docs[0].metadata["k"] == 1
    assert docs[0].metadata["score"] > 0 and docs[0].id == docs[0].metadata["chunk_id"]

    async def with_async() -> list[Document]:
        async with AsyncClient(url) as ars:
            r = RagserveRetriever(async_client=ars, collection="kb", search_kwargs={"top_k": 1})
            return await r.ainvoke("yeast bread", config={"run_name": "t"})

    assert asyncio.run(with_async())[0].metadata["document_id"] == "bread"


def test_llamaindex_retriever(url: str) -> None:
    pytest.importorskip("llama_index.core", reason="the [llamaindex] extra is not installed")
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore

    from ragserve.client.llamaindex import RagserveRetriever

    with Client(url) as rs:
        retriever = RagserveRetriever(rs, "kb", top_k=1, mode="lexical")
        assert isinstance(retriever, BaseRetriever)
        nodes = retriever.retrieve("octopus hearts")
    assert len(nodes) == 1 and isinstance(nodes[0], NodeWithScore)
    assert nodes[0].node.get_content().startswith("An octopus has three hearts")
    assert nodes[0].node.metadata["document_id"] == "octopus" and nodes[0].score

    async def with_async() -> list[NodeWithScore]:
        async with AsyncClient(url) as ars:
            return await RagserveRetriever(None, "kb", async_client=ars).aretrieve("wild yeast")

    assert asyncio.run(with_async())[0].node.metadata["document_id"] == "bread"


def test_the_client_imports_neither_library() -> None:
    code = (
        "import sys, ragserve.client, ragserve.mcp_server; "
        "print([m for m in sys.modules if m.startswith(('langchain', 'llama_index'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
