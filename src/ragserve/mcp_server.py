"""ragserve as an MCP server (the official ``mcp`` SDK): tools to search, list collections, read
a document and add text.

Every tool is a call of :class:`ragserve.client.AsyncClient` against the HTTP API, so an agent
gets exactly what an HTTP client gets (the same validation, admission control, metrics and
errors) and the code of each route exists once:

* ``/mcp`` on a running server (streamable HTTP, stateless, JSON answers) calls the app it is
  mounted in, in process (``httpx.ASGITransport``), with the caller's ``Authorization`` header;
  the endpoint itself refuses callers without a valid key when keys are set. One server, one
  copy of the models, any number of agents. The route is mounted by
  :mod:`ragserve.api.mcp_mount`, which imports this module (and the SDK) on first use.
* ``ragserve mcp`` speaks MCP over stdio: against a running server (``--url``), or, without
  one, against an app it starts in process over the local data directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

import anyio
import httpx
from anyio.abc import TaskStatus
from fastapi import FastAPI
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, Field

from ragserve import __version__
from ragserve.api import schemas as s
from ragserve.client import AsyncClient
from ragserve.errors import RagserveError, Unavailable

#: An AsyncClient for one tool call, given the MCP request's context.
ClientFactory = Callable[[Context[Any, Any]], contextlib.AbstractAsyncContextManager[AsyncClient]]

INSTRUCTIONS = """\
ragserve is a retrieval service: collections of documents split into chunks, searched with
BM25 keywords and dense embeddings (hybrid), optionally reranked by a cross-encoder.
Start with list_collections to see what exists, then search one collection. Use get_document to
read a whole document a hit came from, and add_text to store new text for later searches."""


class Hit(BaseModel):
    """One search result: a chunk of a document."""

    document_id: str = Field(description="Id of the document the chunk belongs to.")
    chunk_id: str = Field(description="Id of the chunk.")
    text: str = Field(description="The chunk's text.")
    score: float = Field(
        description="Relevance; higher is better. Comparable only within one search."
    )
    rank: int = Field(description="Position in the results, 1-based.")
    source: str = Field(
        description="Where the document came from (file path or upload name), else its id."
    )
    title: str | None = Field(default=None, description="The document's title, if any.")
    metadata: dict[str, Any] = Field(description="The chunk's metadata.")


class SearchResult(BaseModel):
    hits: list[Hit]
    timings_ms: dict[str, float] = Field(description="Time per search stage, milliseconds.")


class CollectionInfo(BaseModel):
    name: str
    documents: int = Field(description="Documents stored.")
    chunks: int = Field(description="Chunks (search units) stored.")
    embedder: str = Field(description="Embedding model of the collection.")


class Collections(BaseModel):
    collections: list[CollectionInfo]


class DocumentText(BaseModel):
    id: str
    title: str | None
    metadata: dict[str, Any]
    text: str = Field(description="The document's text, rebuilt from its chunks.")
    chunks: int = Field(description="Number of chunks.")


class Added(BaseModel):
    id: str = Field(description="The document's id (given, or derived from the text).")
    status: Literal["created", "updated", "unchanged", "failed"]
    chunks: int
    error: str | None = None


def _hit(h: s.SearchHit) -> Hit:
    meta = h.metadata or {}
    title = meta.get("title")
    return Hit(
        document_id=h.document_id,
        chunk_id=h.chunk_id,
        text=h.text,
        score=h.score,
        rank=h.rank,
        source=str(meta.get("source") or h.document_id),
        title=title if isinstance(title, str) else None,
        metadata=meta,
    )


def document_text(doc: s.DocumentOut) -> str:
    """The text of a document from its chunks (which may overlap: each adds what lies past the
    previous one's end)."""
    parts: list[str] = []
    end = 0
    for c in sorted(doc.chunks, key=lambda c: c.start):
        if c.end <= end:
            continue
        parts.append(c.text[max(0, end - c.start) :] if c.start < end else c.text)
        end = c.end
    return "".join(parts)


def build_mcp(client_for: ClientFactory) -> MCPServer:
    """The MCP server; each tool call gets its client from ``client_for``."""
    # MCPServer() calls logging.basicConfig (a Rich handler and a level on the root logger):
    # the process's logging is not a library's to set. basicConfig does nothing while the root
    # logger has a handler, so it has one for the call.
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        mcp: MCPServer = MCPServer("ragserve", instructions=INSTRUCTIONS, version=__version__)
    finally:
        root.removeHandler(guard)

    async def call(ctx: Context[Any, Any], fn: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
        async with client_for(ctx) as client:
            try:
                return await fn(client)
            except RagserveError as exc:  # the server's message, as the tool's error
                raise ToolError(f"{exc.error_type}: {exc.message}") from None

    @mcp.tool()
    async def search(
        ctx: Context[Any, Any],
        collection: Annotated[
            str, Field(description="Collection to search, e.g. 'docs' (see list_collections).")
        ],
        query: Annotated[
            str,
            Field(
                description="What to look for, in natural language or keywords, e.g. "
                "'how do I rotate an API key'."
            ),
        ],
        mode: Annotated[
            Literal["hybrid", "dense", "lexical"],
            Field(
                description="'hybrid' (default, best in general): keywords + meaning; "
                "'lexical': exact words (names, codes, error messages); 'dense': meaning only "
                "(paraphrases)."
            ),
        ] = "hybrid",
        top_k: Annotated[int, Field(ge=1, le=100, description="How many hits, 1-100.")] = 5,
        rerank: Annotated[
            bool,
            Field(
                description="Re-score the best candidates with a cross-encoder: better "
                "order, slower (hundreds of ms)."
            ),
        ] = False,
        filter: Annotated[
            dict[str, Any] | None,
            Field(
                description="Metadata conditions every hit must meet, e.g. "
                '{"lang": "en"} or {"year": {"$gte": 2020}}; omit for none.'
            ),
        ] = None,
    ) -> SearchResult:
        """Search one collection. Returns hits best first, each with document_id, text (the
        matching chunk), score (higher is better; compare within one search only) and source
        (file or upload the document came from). Example: search(collection="docs",
        query="reset a password", top_k=3)."""

        async def run(c: AsyncClient) -> SearchResult:
            out = await c.search(
                collection, query, mode=mode, top_k=top_k, rerank=rerank, filter=filter
            )
            return SearchResult(hits=[_hit(h) for h in out.results], timings_ms=out.timings_ms)

        result: SearchResult = await call(ctx, run)
        return result

    @mcp.tool()
    async def list_collections(ctx: Context[Any, Any]) -> Collections:
        """List the collections, with how many documents and chunks each holds. Call this first
        to learn which collection names search accepts."""

        async def run(c: AsyncClient) -> Collections:
            return Collections(
                collections=[
                    CollectionInfo(
                        name=x.name, documents=x.documents, chunks=x.chunks, embedder=x.embedder
                    )
                    for x in await c.list_collections()
                ]
            )

        result: Collections = await call(ctx, run)
        return result

    @mcp.tool()
    async def get_document(
        ctx: Context[Any, Any],
        collection: Annotated[str, Field(description="Collection the document is in.")],
        document_id: Annotated[
            str, Field(description="The document_id of a search hit, e.g. 'guide/setup.md'.")
        ],
    ) -> DocumentText:
        """Read a whole document (all its text, title and metadata), e.g. to see the context
        around a search hit: get_document(collection="docs", document_id="guide/setup.md")."""

        async def run(c: AsyncClient) -> DocumentText:
            doc = await c.get_document(collection, document_id)
            return DocumentText(
                id=doc.id,
                title=doc.title,
                metadata=doc.metadata,
                text=document_text(doc),
                chunks=len(doc.chunks),
            )

        result: DocumentText = await call(ctx, run)
        return result

    @mcp.tool()
    async def add_text(
        ctx: Context[Any, Any],
        collection: Annotated[
            str,
            Field(
                description="Collection to add to; created (with the default embedder) if "
                "it does not exist. Letters, digits, '_', '.', '-'."
            ),
        ],
        text: Annotated[str, Field(description="The text to store and make searchable.")],
        id: Annotated[
            str | None,
            Field(
                description="Document id; the same id again replaces that document. "
                "Omit: an id derived from the text."
            ),
        ] = None,
        title: Annotated[str | None, Field(description="Optional title.")] = None,
        metadata: Annotated[
            dict[str, Any] | None,
            Field(description='Optional metadata for filters, e.g. {"lang": "en"}.'),
        ] = None,
    ) -> Added:
        """Store a text as a document so later searches find it. Example:
        add_text(collection="notes", text="The staging database moved to db2.", id="note-1")."""

        async def run(c: AsyncClient) -> Added:
            await c.create_collection(collection)
            doc = {"id": id, "text": text, "title": title, "metadata": metadata or {}}
            out = await c.add_documents(
                collection, [{k: v for k, v in doc.items() if v is not None}]
            )
            r = out.results[0]
            return Added(id=r.id, status=r.status, chunks=r.chunks, error=r.error)

        result: Added = await call(ctx, run)
        return result

    return mcp


# ------------------------------------------------------------------------------ /mcp on the app


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class McpHttp:
    """``/mcp``'s MCP side: the server, served over the SDK's streamable HTTP transport
    (stateless, JSON answers) by a session manager (:mod:`ragserve.api.mcp_mount` mounts it,
    checks the keys and starts it on first use)."""

    def __init__(self, server: MCPServer, security: TransportSecuritySettings) -> None:
        self.server = server
        self.security = security

    async def serve(
        self, stop: anyio.Event, *, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run a session manager until ``stop``; ``task_status.started(manager)`` once it
        takes requests. A session manager runs once: each lifespan starts a new one."""
        # The SDK's public way to a session manager: building its app makes a new one (the
        # Starlette app around it is not used: ragserve.api.mcp_mount hands requests to it).
        self.server.streamable_http_app(
            json_response=True, stateless_http=True, transport_security=self.security
        )
        manager = self.server.session_manager
        async with manager.run():
            task_status.started(manager)
            await stop.wait()


def http_server(app: FastAPI, host: str) -> McpHttp:
    """The MCP server of ``app``: its tools call the app in process (``httpx.ASGITransport``)
    with the caller's ``Authorization`` header."""
    transport = httpx.ASGITransport(app=app)

    @contextlib.asynccontextmanager
    async def client_for(ctx: Context[Any, Any]) -> AsyncIterator[AsyncClient]:
        auth = (ctx.headers or {}).get("authorization")
        headers = {"authorization": auth} if auth else {}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://ragserve", headers=headers, timeout=None
        ) as http:
            yield AsyncClient(http=http)

    security = (
        TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
        if _loopback(host)
        else TransportSecuritySettings(enable_dns_rebinding_protection=False)
    )
    return McpHttp(build_mcp(client_for), security)


# ------------------------------------------------------------------------------ stdio


@contextlib.asynccontextmanager
async def _remote(url: str, api_key: str | None) -> AsyncIterator[ClientFactory]:
    @contextlib.asynccontextmanager
    async def client_for(_: Context[Any, Any]) -> AsyncIterator[AsyncClient]:
        async with AsyncClient(url, api_key=api_key) as client:
            yield client

    yield client_for


@contextlib.asynccontextmanager
async def _local(app: FastAPI) -> AsyncIterator[ClientFactory]:
    keys: list[bytes] = app.state.api_keys
    headers = {"authorization": f"Bearer {keys[0].decode()}"} if keys else {}
    async with app.router.lifespan_context(app):
        state = app.state.readiness  # the models load in the background: wait for them
        while not (state.ready or state.failed):
            await anyio.sleep(0.05)
        if not state.failed:

            @contextlib.asynccontextmanager
            async def client_for(_: Context[Any, Any]) -> AsyncIterator[AsyncClient]:
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://ragserve", headers=headers, timeout=None
                ) as http:
                    yield AsyncClient(http=http)

            yield client_for
            return
    # Raised once the app has stopped (not inside its task groups): a missing model, a data
    # directory a running server holds, ...
    raise Unavailable(f"start-up failed: {state.reason}")


async def serve_stdio(
    url: str | None, api_key: str | None, app_factory: Callable[[], FastAPI]
) -> None:
    """``ragserve mcp``: MCP over stdin/stdout, against ``url`` or an app of its own."""
    backend = _remote(url, api_key) if url else _local(app_factory())
    async with backend as client_for:
        await build_mcp(client_for).run_stdio_async()
