"""One :class:`~ragserve.client._core.Call` per route of the HTTP API (the sync and async
clients send them; neither builds a request itself)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx

from ragserve.api import schemas as s
from ragserve.client._core import Call, drop_none, model, nothing, segment, text

if TYPE_CHECKING:  # imported when used: ragserve.api.admin brings FastAPI with it
    from ragserve.api.admin import Key, KeyCreated

Mode = Literal["hybrid", "dense", "lexical"]
DocumentLike = s.DocumentIn | Mapping[str, Any]


def _collection(name: str) -> str:
    return f"/v1/collections/{segment(name)}"


def health() -> Call[s.Health]:
    return Call("GET", "/healthz", model(s.Health))


def ready() -> Call[s.Readiness]:
    # 503 is an answer here (not ready, with the reason), not an error to retry.
    return Call("GET", "/readyz", model(s.Readiness), ok=frozenset({200, 503}), retry=False)


def create_collection(
    name: str, embedder: str | None, fusion: Mapping[str, Any] | None = None
) -> Call[s.Collection]:
    body = drop_none(name=name, embedder=embedder, fusion=dict(fusion) if fusion else None)
    return Call("POST", "/v1/collections", model(s.Collection), json=body)


def update_collection(name: str, fusion: Mapping[str, Any] | None) -> Call[s.Collection]:
    body = {"fusion": dict(fusion) if fusion is not None else None}
    return Call("PATCH", _collection(name), model(s.Collection), json=body)


def _collections(r: httpx.Response) -> list[s.Collection]:
    return s.CollectionList.model_validate_json(r.content).collections


def list_collections() -> Call[list[s.Collection]]:
    return Call("GET", "/v1/collections", _collections)


def get_collection(name: str) -> Call[s.Collection]:
    return Call("GET", _collection(name), model(s.Collection))


def delete_collection(name: str) -> Call[None]:
    return Call("DELETE", _collection(name), nothing)


def _document(d: DocumentLike) -> dict[str, Any]:
    if isinstance(d, s.DocumentIn):
        return d.model_dump(exclude_none=True)
    return dict(d)


def add_documents(collection: str, documents: Sequence[DocumentLike]) -> Call[s.DocumentsOut]:
    body = {"documents": [_document(d) for d in documents]}
    return Call("POST", f"{_collection(collection)}/documents", model(s.DocumentsOut), json=body)


def get_document(collection: str, document_id: str) -> Call[s.DocumentOut]:
    path = f"{_collection(collection)}/documents/{segment(document_id)}"
    return Call("GET", path, model(s.DocumentOut))


def delete_document(collection: str, document_id: str) -> Call[None]:
    return Call("DELETE", f"{_collection(collection)}/documents/{segment(document_id)}", nothing)


def search(
    collection: str,
    query: str,
    *,
    top_k: int | None,
    mode: Mode | None,
    rerank: bool | None,
    rerank_top_n: int | None,
    filter: Mapping[str, Any] | None,
    collapse: bool | None,
    fusion: Mapping[str, Any] | None,
    extra: Mapping[str, Any],
) -> Call[s.SearchOut]:
    body = drop_none(
        query=query,
        top_k=top_k,
        mode=mode,
        rerank=rerank,
        rerank_top_n=rerank_top_n,
        filter=filter,
        collapse=collapse,
        fusion=fusion,
    )
    body.update(extra)
    return Call("POST", f"{_collection(collection)}/search", model(s.SearchOut), json=body)


def embeddings(
    input: str | Sequence[str],
    *,
    model_name: str | None,
    input_type: Literal["query", "document"] | None,
    dimensions: int | None,
    encoding_format: Literal["float", "base64"] | None,
) -> Call[s.EmbeddingsOut]:
    body = drop_none(
        input=input if isinstance(input, str) else list(input),
        model=model_name,
        input_type=input_type,
        dimensions=dimensions,
        encoding_format=encoding_format,
    )
    return Call("POST", "/v1/embeddings", model(s.EmbeddingsOut), json=body)


def tokenize(input: str | Sequence[str], *, model_name: str | None) -> Call[s.TokenizeOut]:
    body = drop_none(input=input if isinstance(input, str) else list(input), model=model_name)
    return Call("POST", "/v1/tokenize", model(s.TokenizeOut), json=body)


def rerank(
    query: str,
    documents: Sequence[str],
    *,
    top_n: int | None,
    model_name: str | None,
    return_documents: bool | None,
) -> Call[s.RerankOut]:
    body = drop_none(
        query=query,
        documents=list(documents),
        top_n=top_n,
        model=model_name,
        return_documents=return_documents,
    )
    return Call("POST", "/v1/rerank", model(s.RerankOut), json=body)


def json_object(r: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = r.json()
    return body


def stats() -> Call[dict[str, Any]]:
    return Call("GET", "/v1/stats", json_object)


def metrics() -> Call[str]:
    return Call("GET", "/metrics", text)


# ------------------------------------------------------------------------------ keys (admin)

Role = Literal["read", "write", "admin"]


def _key(r: httpx.Response) -> Key:
    from ragserve.api.admin import Key

    return Key.model_validate_json(r.content)


def _key_created(r: httpx.Response) -> KeyCreated:
    from ragserve.api.admin import KeyCreated

    return KeyCreated.model_validate_json(r.content)


def _keys(r: httpx.Response) -> list[Key]:
    from ragserve.api.admin import KeyList

    return KeyList.model_validate_json(r.content).keys


def create_key(name: str, role: Role, collections: Sequence[str] | None) -> Call[KeyCreated]:
    body = drop_none(
        name=name, role=role, collections=None if collections is None else list(collections)
    )
    return Call("POST", "/v1/keys", _key_created, json=body)


def list_keys() -> Call[list[Key]]:
    return Call("GET", "/v1/keys", _keys)


def revoke_key(key_id: str) -> Call[Key]:
    return Call("DELETE", f"/v1/keys/{segment(key_id)}", _key)


# ------------------------------------------------------------------------------ ingest jobs

#: States after which a job no longer changes.
JOB_DONE = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


def create_job(
    collection: str, documents: Sequence[DocumentLike], source: str | None
) -> Call[dict[str, Any]]:
    body: dict[str, Any] = {"documents": [_document(d) for d in documents]}
    if source is not None:
        body["source"] = source
    return Call("POST", f"{_collection(collection)}/jobs", json_object, json=body)


def _jobs(r: httpx.Response) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


def list_jobs() -> Call[list[dict[str, Any]]]:
    return Call("GET", "/v1/jobs", _jobs)


def get_job(job_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/v1/jobs/{segment(job_id)}", json_object)


def cancel_job(job_id: str) -> Call[dict[str, Any]]:
    return Call("POST", f"/v1/jobs/{segment(job_id)}/cancel", json_object)
