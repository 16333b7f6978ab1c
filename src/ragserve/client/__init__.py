"""A typed Python client for ragserve's HTTP API (httpx; sync and asyncio).

::

    from ragserve.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as rs:
        rs.create_collection("docs")
        rs.upload("docs", "handbook/", progress=lambda p: print(p.bytes_sent, "/", p.bytes_total))
        for hit in rs.search("docs", "how do I reset my password?", top_k=5).results:
            print(hit.score, hit.document_id, hit.text[:80])

Errors are the server's, as the classes of :mod:`ragserve.errors` (``CollectionNotFound``,
``InvalidInput``, ``Unauthorized``, ``Overloaded`` with ``retry_after``, ...). The LangChain and
LlamaIndex retrievers are in :mod:`ragserve.client.langchain` and
:mod:`ragserve.client.llamaindex` (each imports its library; install the extra).
"""

from ragserve.api.schemas import (
    Collection,
    DocumentIn,
    DocumentOut,
    DocumentsOut,
    SearchHit,
    SearchOut,
)
from ragserve.client._core import NO_RETRIES, Progress, RetryPolicy, error_from
from ragserve.client.aio import AsyncClient
from ragserve.client.sync import Client

__all__ = [
    "NO_RETRIES",
    "AsyncClient",
    "Client",
    "Collection",
    "DocumentIn",
    "DocumentOut",
    "DocumentsOut",
    "Progress",
    "RetryPolicy",
    "SearchHit",
    "SearchOut",
    "error_from",
]
