"""Request and response models of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _json_integer(value: Any) -> Any:
    """A JSON integer (``5`` or ``5.0``, as JSON Schema counts them), never ``true`` or ``"5"``,
    which pydantic's lax mode would turn into numbers."""
    if isinstance(value, bool | str):
        raise ValueError("must be an integer")
    return value


_JSON_INT = BeforeValidator(_json_integer)
#: An integer field; bounds go in ``Field`` on the field (or before ``_JSON_INT`` inside an
#: ``Annotated`` of an optional one), so the OpenAPI document shows them as minimum/maximum.
JsonInt = Annotated[int, _JSON_INT]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    reason: str | None = None
    models: dict[str, float] = Field(default_factory=dict, description="Load seconds per model.")


# ---------------------------------------------------------------- collections


class CollectionCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    embedder: str | None = None


class Collection(BaseModel):
    name: str
    embedder: str
    dimension: int
    documents: int
    chunks: int


class CollectionList(BaseModel):
    collections: list[Collection]


# ---------------------------------------------------------------- documents


class DocumentIn(Strict):
    id: str | None = Field(default=None, min_length=1, max_length=512)
    text: str
    title: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsIn(Strict):
    documents: list[DocumentIn] = Field(min_length=1)


class DocumentResult(BaseModel):
    id: str
    status: Literal["created", "updated", "unchanged", "failed"]
    chunks: int
    error: str | None = None


class DocumentsOut(BaseModel):
    results: list[DocumentResult]


class ChunkOut(BaseModel):
    chunk_id: str
    index: int
    text: str
    start: int
    end: int
    metadata: dict[str, Any]


class DocumentOut(BaseModel):
    id: str
    title: str | None
    metadata: dict[str, Any]
    content_hash: str
    chunks: list[ChunkOut]


# ---------------------------------------------------------------- search


class FusionIn(Strict):
    """How a hybrid search fuses its dense and lexical legs (unset: the server's default)."""

    method: Literal["rrf", "minmax", "zscore", "dbsf"] | None = Field(
        default=None,
        description="rrf: weighted reciprocal rank fusion; minmax / zscore / dbsf: a weighted "
        "sum of each leg's scores normalised per query.",
    )
    weights: (
        Literal["auto"] | dict[Literal["dense", "lexical"], Annotated[float, Field(ge=0, le=1000)]]
    ) | None = Field(
        default=None,
        description='Weight per leg, e.g. {"dense": 0.7, "lexical": 0.3}, or "auto": chosen per '
        "query from how peaked each leg's score list is.",
    )
    k: Annotated[int, Field(ge=0, le=10_000), _JSON_INT] | None = Field(
        default=None, description="RRF constant."
    )


class SearchIn(Strict):
    query: str = Field(min_length=1)
    top_k: JsonInt = Field(default=10, ge=1)
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    rerank: StrictBool = False
    rerank_top_n: JsonInt = Field(default=20, ge=1, le=200)
    filter: dict[str, Any] | None = None
    collapse: StrictBool = Field(
        default=False, description="One hit per document (its best chunk)."
    )
    fusion: FusionIn | None = None


class SearchHit(BaseModel):
    document_id: str
    chunk_id: str
    text: str
    score: float
    rank: int
    metadata: dict[str, Any]


class SearchOut(BaseModel):
    results: list[SearchHit]
    timings_ms: dict[str, float]


# ---------------------------------------------------------------- OpenAI embeddings


class EmbeddingsIn(BaseModel):
    input: str | Annotated[list[str], Field(min_length=1)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1), _JSON_INT] | None = None
    user: str | None = None
    input_type: Literal["query", "document"] = Field(
        default="document", description="ragserve extension: apply the query or document prefix."
    )
    instruction: StrictBool = Field(
        default=True,
        description="ragserve extension: false leaves out a query instruction the model marks "
        "optional (what hybrid searches embed; see RAGSERVE_HYBRID_QUERY_INSTRUCTION).",
    )


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


# ---------------------------------------------------------------- Cohere rerank


class RerankDoc(BaseModel):
    text: str


class RerankIn(BaseModel):
    query: str = Field(min_length=1)
    documents: list[str | RerankDoc] = Field(min_length=1)
    top_n: Annotated[int, Field(ge=1), _JSON_INT] | None = None
    model: str | None = None
    return_documents: StrictBool = False


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    logit: float
    document: RerankDoc | None = None


class RerankOut(BaseModel):
    id: str
    results: list[RerankResult]
    meta: dict[str, Any] = Field(default_factory=dict)
