"""HTTP routes: thin translations between JSON and :class:`~ragserve.service.RetrievalService`."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragserve.admission import Admission, Kind, wait_for_disconnect
from ragserve.api import schemas as s
from ragserve.api.auth import principal_of, require_key
from ragserve.api.search_io import search_json, search_request
from ragserve.config import Settings
from ragserve.errors import InvalidInput, PayloadTooLarge, Unavailable
from ragserve.ingest.limits import Limits
from ragserve.ingest.sources import IngestFailure, Item
from ragserve.ingest.worker import ParsePool
from ragserve.service import RetrievalService
from ragserve.store.base import CollectionInfo
from ragserve.types import Document

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed request body",
        401: "Missing or invalid API key",
        403: "The key's scope does not cover this request",
        404: "Not found",
        409: "Conflict",
        413: "Payload too large",
        422: "Invalid request",
        429: "Too much work in flight (see Retry-After)",
        503: "Not ready",
    }.items()
}


async def service(request: Request) -> RetrievalService:
    """The running service (async: nothing here blocks, and a sync dependency would cost every
    request a round trip through the thread pool)."""
    state = request.app.state.readiness
    svc: RetrievalService | None = state.running()
    if svc is None:
        raise Unavailable(f"not ready: {state.reason}")
    return svc


Service = Annotated[RetrievalService, Depends(service)]
T = TypeVar("T")


async def admitted(
    request: Request, kind: Kind, fn: Callable[[], T], gone: threading.Event | None = None
) -> T:
    """``fn()`` on a worker thread once admission control lets it in; 429 (or dropped, if the
    client leaves) when it can't be answered within the deadline (see ragserve.admission).
    ``gone`` is set if the client leaves while ``fn`` runs."""
    admission: Admission = request.app.state.admission
    return await admission.run(
        kind, fn, disconnected=lambda: wait_for_disconnect(request.receive), gone=gone
    )


def _json(model: BaseModel) -> Response:
    """A response model serialized on the worker thread (not again on the event loop)."""
    return Response(model.model_dump_json().encode(), media_type="application/json")


CollectionName = Annotated[
    str, Path(pattern=s.NAME_PATTERN, description="Collection name.", examples=["docs"])
]
DocumentId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=512,
        description="Document id, percent-encoded (any character, '/' included: the route "
        "takes the rest of the path, so 'a/b', 'a%2Fb' and 'a%252Fb' name 'a/b', 'a/b', 'a%2Fb').",
    ),
]

health_router = APIRouter(tags=["health"])
collections_router = APIRouter(
    prefix="/v1/collections",
    tags=["collections"],
    dependencies=[Depends(require_key)],
    responses=_ERRORS,
)
models_router = APIRouter(
    prefix="/v1", tags=["models"], dependencies=[Depends(require_key)], responses=_ERRORS
)


# ------------------------------------------------------------------------------ health


@health_router.head("/healthz", include_in_schema=False)
@health_router.get("/healthz", operation_id="healthz", response_model=s.Health)
async def healthz() -> s.Health:
    """Liveness: the process answers (async: never waits for a worker thread)."""
    return s.Health(status="ok")


@health_router.head("/readyz", include_in_schema=False)
@health_router.get(
    "/readyz",
    operation_id="readyz",
    response_model=s.Readiness,
    responses={503: {"model": s.Readiness, "description": "Not ready, with the reason"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 once the models are loaded and the store is open; 503 with the reason.
    Async, and reads only in-memory state: it never waits behind model work."""
    state = request.app.state.readiness
    loads = {}
    if state.service is not None:
        loads = {rec.name: rec.seconds for rec in state.service.models.snapshot().loads}
    ready, reason = state.status()
    body = s.Readiness(
        status="ready" if ready else "not_ready", reason=None if ready else reason, models=loads
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


# ------------------------------------------------------------------------------ collections


def _collection(info: CollectionInfo, svc: RetrievalService) -> s.Collection:
    return s.Collection.of(info, svc.collection_fusion(info.name))


@collections_router.post(
    "", operation_id="create_collection", response_model=s.Collection, status_code=201
)
def create_collection(body: s.CollectionCreate, svc: Service) -> s.Collection:
    """Create a collection bound to an embedder (idempotent for the same embedder), optionally
    with its own default fusion."""
    fusion = body.fusion.given() if body.fusion is not None else None
    return _collection(svc.create_collection(body.name, body.embedder, fusion=fusion), svc)


@collections_router.get("", operation_id="list_collections", response_model=s.CollectionList)
def list_collections(svc: Service, request: Request) -> s.CollectionList:
    """The collections the request's key reaches."""
    key = principal_of(request)
    return s.CollectionList(
        collections=[_collection(c, svc) for c in svc.list_collections() if key.reaches(c.name)]
    )


@collections_router.get("/{name}", operation_id="get_collection", response_model=s.Collection)
def get_collection(name: CollectionName, svc: Service) -> s.Collection:
    return _collection(svc.get_collection(name), svc)


@collections_router.patch("/{name}", operation_id="update_collection", response_model=s.Collection)
def update_collection(name: CollectionName, body: s.CollectionUpdate, svc: Service) -> s.Collection:
    """Set or clear the collection's default fusion (hybrid searches that name none use it)."""
    fusion = body.fusion.given() if body.fusion is not None else None
    svc.set_collection_fusion(name, fusion)
    return _collection(svc.get_collection(name), svc)


@collections_router.delete("/{name}", operation_id="delete_collection", status_code=204)
def delete_collection(name: CollectionName, svc: Service) -> Response:
    svc.delete_collection(name)
    return Response(status_code=204)


# ------------------------------------------------------------------------------ documents

_DOCUMENTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": s.DocumentsIn.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        }
                    },
                    "required": ["files"],
                }
            },
        },
    }
}


async def _documents_from_request(
    request: Request, svc: RetrievalService, most: int | None = None
) -> list[Document | IngestFailure]:
    """Documents (or per-document failures) from a JSON body or uploaded files.

    Files are parsed in worker processes with per-document budgets
    (:mod:`ragserve.ingest.worker`), never on the event loop; JSON is validated on a thread."""
    settings = svc.settings
    files = settings.max_documents_per_request  # files per request, whatever ``most`` is
    most = most or settings.max_documents_per_request
    too_many = f"more than {most} documents or files in one request; the limit is {most}"
    content_type = request.headers.get("content-type", "")
    items: list[Document | IngestFailure] = []
    if content_type.startswith("multipart/form-data"):
        parsing = _parsing(request, settings)
        try:
            async with request.form(max_files=files) as form:
                uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
                if not uploads:
                    raise InvalidInput("multipart body has no files")
                for upload in uploads:
                    data = await upload.read()
                    name = upload.filename or "upload"
                    items.extend(await parsing.parse(data, name, upload.content_type))
                    if len(items) > most:
                        raise PayloadTooLarge(too_many)
        except StarletteHTTPException as exc:
            if exc.status_code == 400 and "Too many files" in str(exc.detail):
                raise PayloadTooLarge(
                    f"more than {files} documents or files in one request; the limit is {files}"
                ) from None
            raise
        return items
    if not content_type.startswith("application/json"):
        raise InvalidInput("send application/json or multipart/form-data")
    raw = await request.body()
    return await to_thread.run_sync(_json_documents, raw, svc, most)


def _json_documents(
    raw: bytes, svc: RetrievalService, most: int | None = None
) -> list[Document | IngestFailure]:
    """The documents of a JSON body, each checked (on a worker thread: a body may be 64 MB)."""
    try:
        # json.loads, as FastAPI parses the other routes' bodies: a lone surrogate escape is
        # JSON, and fails its own document below (pydantic's parser refuses the whole body).
        data = json.loads(raw)
    except ValueError as exc:  # not JSON at all (or not UTF-8): malformed, 400 like every route
        raise StarletteHTTPException(400, f"request body is not valid JSON: {exc}") from None
    return documents_of(data, svc, most)


def documents_of(
    data: object, svc: RetrievalService, most: int | None = None
) -> list[Document | IngestFailure]:
    """The documents of a parsed JSON body (``{"documents": [...]}``), each checked; at most
    ``most`` (default: ``RAGSERVE_MAX_DOCUMENTS_PER_REQUEST``)."""
    try:
        body = s.DocumentsIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{where}: {first['msg']}" if where else first["msg"]) from None
    return svc.documents_from_records(body.documents, most=most)


@dataclass
class _Parsing:
    """The app's parser processes, and the threads that wait on them (bounded)."""

    pool: ParsePool
    threads: CapacityLimiter

    async def parse(self, data: bytes, name: str, content_type: str | None) -> list[Item]:
        return await to_thread.run_sync(
            self.pool.parse, data, name, content_type, limiter=self.threads
        )


def _parsing(request: Request, settings: Settings) -> _Parsing:
    parsing: _Parsing | None = getattr(request.app.state, "parsing", None)
    if parsing is None:  # created on the event loop: no race
        pool = ParsePool(Limits.from_settings(settings), workers=settings.parse_workers,
                         max_waiting=PARSE_WAITING)  # fmt: skip
        parsing = _Parsing(pool, CapacityLimiter(pool.workers + PARSE_WAITING))
        request.app.state.parsing = parsing
    return parsing


#: Uploads that may wait for a parser process (each on a thread); more get 429.
PARSE_WAITING = 16


@collections_router.post(
    "/{name}/documents",
    operation_id="add_documents",
    response_model=s.DocumentsOut,
    openapi_extra=_DOCUMENTS_BODY,
)
async def add_documents(
    name: CollectionName, request: Request, svc: Service
) -> s.DocumentsOut | JSONResponse:
    """Add or update documents (JSON records or uploaded files); one result per document.

    When the store could not take a write (507 disk full, 503 damaged, read-only), the answer
    has that status, the error, and still one result per document: those stored say so."""
    items = await _documents_from_request(request, svc)
    results = await admitted(request, Kind.INGEST, lambda: svc.ingest(name, items))
    out = s.DocumentsOut(results=[s.DocumentResult.model_validate(r) for r in results])
    refused = next((r for r in results if r.error_type in _STORE_REFUSALS), None)
    if refused is None:
        return out
    error = {"type": refused.error_type, "message": refused.error}
    body = {"error": error, **out.model_dump()}
    return JSONResponse(body, status_code=_STORE_REFUSALS[refused.error_type or ""])


#: Errors of a store that cannot take writes (or a model server that cannot embed) -> the
#: status of an ingest answer that met one.
_STORE_REFUSALS = {
    "insufficient_storage": 507,
    "store_damaged": 503,
    "model_unavailable": 503,  # the model server (RAGSERVE_EMBEDDER_URL) could not embed
    "model_mismatch": 503,
}


@collections_router.get(
    "/{name}/documents/{document_id:path}",
    operation_id="get_document",
    response_model=s.DocumentOut,
)
def get_document(name: CollectionName, document_id: DocumentId, svc: Service) -> s.DocumentOut:
    return s.DocumentOut.model_validate(svc.get_document(name, document_id))


@collections_router.delete(
    "/{name}/documents/{document_id:path}", operation_id="delete_document", status_code=204
)
def delete_document(name: CollectionName, document_id: DocumentId, svc: Service) -> Response:
    svc.delete_document(name, document_id)
    return Response(status_code=204)


# ------------------------------------------------------------------------------ search


@collections_router.post("/{name}/search", operation_id="search", response_model=s.SearchOut)
async def search(
    name: CollectionName, body: s.SearchIn, svc: Service, request: Request
) -> Response:
    """Hybrid (BM25 + dense, fused), dense or lexical search, optionally reranked."""
    gone = threading.Event()  # the client left: a running search skips its rerank

    def run() -> tuple[bytes, Mapping[str, float]]:
        req = search_request(body, lambda: svc.search_fusion(name), gone.is_set)
        result = svc.search(name, req)
        return search_json(result), result.timings_ms

    # One trip to a worker thread for the search and its JSON; FastAPI would otherwise make a
    # second one to validate the returned model again (measured in docs/service.md).
    kind = Kind.RERANK if body.rerank else Kind.SEARCH
    content, timings = await admitted(request, kind, run, gone)
    request.state.timings_ms = timings  # for the stage histograms and the access log
    return Response(content, media_type="application/json")


# ------------------------------------------------------------------------------ models


@models_router.post("/embeddings", operation_id="create_embeddings", response_model=s.EmbeddingsOut)
async def embeddings(body: s.EmbeddingsIn, svc: Service, request: Request) -> Response:
    """OpenAI-compatible embeddings."""
    return await admitted(request, Kind.EMBEDDINGS, lambda: _json(_embeddings(body, svc)))


def _embeddings(body: s.EmbeddingsIn, svc: RetrievalService) -> s.EmbeddingsOut:
    result = svc.embeddings(
        [body.input] if isinstance(body.input, str) else body.input,
        body.model,
        query=body.input_type == "query",
        instruction=body.instruction,
        dimensions=body.dimensions,
    )
    return s.EmbeddingsOut.of(result, body.encoding_format)


@models_router.post("/tokenize", operation_id="tokenize", response_model=s.TokenizeOut)
async def tokenize(body: s.TokenizeIn, svc: Service, request: Request) -> Response:
    """ragserve: the character offsets of every token of each input with an embedder's
    tokenizer (what an `api` process whose embedder is remote cuts chunks with)."""
    return await admitted(request, Kind.EMBEDDINGS, lambda: _json(_tokenize(body, svc)))


def _tokenize(body: s.TokenizeIn, svc: RetrievalService) -> s.TokenizeOut:
    texts = [body.input] if isinstance(body.input, str) else body.input
    return s.TokenizeOut.of(*svc.tokenize(texts, body.model))


@models_router.post("/rerank", operation_id="rerank", response_model=s.RerankOut)
async def rerank(body: s.RerankIn, svc: Service, request: Request) -> Response:
    """Cohere-compatible rerank: relevance_score is the sigmoid of the cross-encoder logit."""
    return await admitted(request, Kind.RERANK, lambda: _json(_rerank(body, svc)))


def _rerank(body: s.RerankIn, svc: RetrievalService) -> s.RerankOut:
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    result = svc.rerank_documents(body.query, texts, body.model, top_n=body.top_n)
    return s.RerankOut.of(result, texts if body.return_documents else None)
