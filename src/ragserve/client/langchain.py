"""A LangChain retriever over a ragserve collection (``pip install 'ragserve[langchain]'``).

::

    from ragserve.client import Client
    from ragserve.client.langchain import RagserveRetriever

    retriever = RagserveRetriever(client=Client("http://127.0.0.1:8000"), collection="docs",
                                  search_kwargs={"top_k": 4, "rerank": True})
    docs = retriever.invoke("how do I reset my password?")

Each hit is a ``Document``: ``page_content`` the chunk's text, ``id`` the chunk id, and the
metadata the chunk's with ``document_id``, ``chunk_id``, ``score`` and ``rank`` added.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field

from ragserve.api.schemas import SearchOut
from ragserve.client.aio import AsyncClient
from ragserve.client.sync import Client


class RagserveRetriever(BaseRetriever):
    """Search one collection; ``search_kwargs`` are :meth:`Client.search`'s options."""

    client: Client | None = None
    async_client: AsyncClient | None = None
    collection: str
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    def _documents(self, out: SearchOut) -> list[Document]:
        return [
            Document(
                page_content=h.text,
                id=h.chunk_id,
                metadata={
                    **h.metadata,
                    "document_id": h.document_id,
                    "chunk_id": h.chunk_id,
                    "score": h.score,
                    "rank": h.rank,
                },
            )
            for h in out.results
        ]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        if self.client is None:
            raise ValueError("RagserveRetriever needs client= for synchronous calls")
        return self._documents(self.client.search(self.collection, query, **self.search_kwargs))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        if self.async_client is None:
            return await super()._aget_relevant_documents(query, run_manager=run_manager)
        out = await self.async_client.search(self.collection, query, **self.search_kwargs)
        return self._documents(out)
