"""A LlamaIndex retriever over a ragserve collection (``pip install 'ragserve[llamaindex]'``).

::

    from ragserve.client import Client
    from ragserve.client.llamaindex import RagserveRetriever

    retriever = RagserveRetriever(Client("http://127.0.0.1:8000"), "docs", top_k=4)
    nodes = retriever.retrieve("how do I reset my password?")

Each hit is a ``NodeWithScore``: a ``TextNode`` (id the chunk id, text the chunk's, metadata the
chunk's with ``document_id`` and ``rank`` added) and the hit's score.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from ragserve.api.schemas import SearchOut
from ragserve.client.aio import AsyncClient
from ragserve.client.sync import Client


def _nodes(out: SearchOut) -> list[NodeWithScore]:
    return [
        NodeWithScore(
            node=TextNode(
                id_=h.chunk_id,
                text=h.text,
                metadata={**h.metadata, "document_id": h.document_id, "rank": h.rank},
            ),
            score=h.score,
        )
        for h in out.results
    ]


class RagserveRetriever(BaseRetriever):
    """Search one collection; ``search_kwargs`` are :meth:`Client.search`'s options
    (``top_k``, ``mode``, ``rerank``, ``filter``, ...)."""

    def __init__(
        self,
        client: Client | None,
        collection: str,
        *,
        async_client: AsyncClient | None = None,
        **search_kwargs: Any,
    ) -> None:
        super().__init__()
        if client is None and async_client is None:
            raise ValueError("RagserveRetriever needs a client or an async_client")
        self.client = client
        self.async_client = async_client
        self.collection = collection
        self.search_kwargs = search_kwargs

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self.client is None:
            raise ValueError("RagserveRetriever needs client= for synchronous calls")
        return _nodes(
            self.client.search(self.collection, query_bundle.query_str, **self.search_kwargs)
        )

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self.async_client is None:
            return self._retrieve(query_bundle)
        out = await self.async_client.search(
            self.collection, query_bundle.query_str, **self.search_kwargs
        )
        return _nodes(out)
