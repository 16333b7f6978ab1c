"""Request and response models of the HTTP API.

Response models are read from the core's types (``Out.model_validate(obj)`` takes attributes:
``CollectionInfo``, ``StoredDocument``, ``IngestResult``, the service's ``Embeddings`` and
``Reranked``), so a field is named once, in the type, and renamed here only where the wire
spells it differently.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

if TYPE_CHECKING:
    from ragserve.fusion import FusionSpec
    from ragserve.service import Embeddings, Reranked
    from ragserve.store.base import CollectionInfo

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


class Out(BaseModel):
    """A response model, validated from the attributes of a core type."""

    model_config = ConfigDict(from_attributes=True)


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

    def given(self) -> dict[str, Any]:
        """The options the request set (null: not set; the default applies)."""
        return self.model_dump(exclude_unset=True, exclude_none=True)


class CollectionCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    embedder: str | None = None
    fusion: FusionIn | None = Field(
        default=None,
        description="The collection's default fusion for hybrid searches that name none "
        "(keys left out: the server's default). Unset: the server's default.",
    )


class CollectionUpdate(Strict):
    fusion: FusionIn | None = Field(
        description="The collection's default fusion (keys left out: the server's default); "
        "null: follow the server's default again.",
    )


class FusionDefault(BaseModel):
    method: str
    weights: dict[str, float] | Literal["auto"]
    k: int


class Collection(Out):
    name: str
    embedder: str
    dimension: int
    documents: int
    chunks: int
    fusion: FusionDefault | None = Field(
        default=None,
        description="The collection's own default fusion; null: the server's (RAGSERVE_FUSION_*).",
    )

    @classmethod
    def of(cls, info: CollectionInfo, fusion: FusionSpec | None) -> Collection:
        """The collection as the API shows it: its counts and its own default fusion."""
        shown = FusionDefault.model_validate(fusion.as_dict()) if fusion else None
        return cls.model_validate(info).model_copy(update={"fusion": shown})


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


class DocumentResult(Out):
    id: str
    status: Literal["created", "updated", "unchanged", "failed"]
    chunks: int
    error: str | None = None


class DocumentsOut(Out):
    results: list[DocumentResult]


class ChunkOut(Out):
    chunk_id: str = Field(validation_alias=AliasChoices("chunk_id", "id"))
    index: int
    text: str
    start: int
    end: int
    metadata: dict[str, Any]


class DocumentOut(Out):
    id: str
    title: str | None
    metadata: dict[str, Any]
    content_hash: str
    chunks: list[ChunkOut]


# ---------------------------------------------------------------- search


class HighlightIn(Strict):
    """Highlight options (``"highlight": true`` takes these defaults)."""

    passages: JsonInt = Field(default=1, ge=1, le=5, description="Passages per hit, best first.")
    max_chars: JsonInt = Field(
        default=200, ge=20, le=2000, description="Longest passage, in characters."
    )


class ExpandIn(Strict):
    """Context expansion: the hit's neighbouring chunks and/or its heading section."""

    neighbors: JsonInt = Field(
        default=0, ge=0, le=20, description="Chunks to add on each side of the hit."
    )
    section: StrictBool = Field(
        default=False,
        description="Add the chunks around the hit that share its heading path (with "
        "neighbors: at most that many each side).",
    )
    max_tokens: JsonInt = Field(
        default=1024,
        ge=1,
        le=8192,
        description="Budget of the merged text in the collection's embedder tokens; the hit "
        "itself is always included.",
    )


class SearchIn(Strict):
    query: str = Field(min_length=1)
    top_k: JsonInt = Field(default=10, ge=1)
    offset: JsonInt = Field(
        default=0,
        ge=0,
        le=1000,
        description="Hits to skip: the page is ranks offset+1 .. offset+top_k of one ranking "
        "(the same for every offset; see next_offset).",
    )
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    rerank: StrictBool = False
    rerank_top_n: JsonInt = Field(default=20, ge=1, le=200)
    filter: dict[str, Any] | None = None
    collapse: StrictBool = Field(
        default=False, description="One hit per document (its best chunk)."
    )
    fusion: FusionIn | None = None
    explain: StrictBool = Field(
        default=False,
        description="Per hit: each leg's rank and score, the fused score and the reranker's "
        "logit and rank; per search: the depth of each leg and the fusion and rerank used.",
    )
    highlight: StrictBool | HighlightIn = Field(
        default=False,
        description="Per hit: its best passages with the character offsets of query terms.",
    )
    expand: ExpandIn | None = Field(
        default=None, description="Per hit: its neighbouring chunks or section as one text."
    )


class LegRank(BaseModel):
    rank: int = Field(description="1-based rank in this leg's list.")
    score: float


class RerankRank(BaseModel):
    rank: int = Field(description="1-based rank by logit within the reranked head.")
    logit: float


class HitExplain(BaseModel):
    """Present legs only: a leg that did not return the chunk is absent."""

    dense: LegRank | None = Field(default=None, description="Cosine similarity.")
    lexical: LegRank | None = Field(default=None, description="BM25 score.")
    fused: LegRank | None = Field(default=None, description="Hybrid: the fused ranking.")
    rerank: RerankRank | None = Field(default=None, description="Reranked head only.")


class Passage(BaseModel):
    start: int = Field(description="Offset of the passage in the hit's text (code points).")
    end: int
    text: str
    matches: list[tuple[int, int]] = Field(
        description="[start, end) of each matched query term, offsets in the passage's text."
    )


class Context(BaseModel):
    """The hit's neighbouring chunks or section, merged (overlaps taken once), as the text
    around the hit's own: the context is ``before + text + after`` (``text`` the hit's)."""

    before: str = Field(description="The merged text before the hit's text.")
    after: str = Field(description="The merged text after the hit's text.")
    start: int = Field(description="Offset in the document (-1 when unknown).")
    end: int
    first_chunk: int
    last_chunk: int
    tokens: int
    truncated: bool = Field(description="A neighbour was left out to stay within max_tokens.")


class SearchHit(BaseModel):
    document_id: str
    chunk_id: str
    text: str
    score: float
    rank: int
    metadata: dict[str, Any]
    explain: HitExplain | None = Field(default=None, description='With "explain".')
    highlights: list[Passage] | None = Field(default=None, description='With "highlight".')
    context: Context | None = Field(
        default=None,
        description='With "expand": the text around this hit (before + text + after).',
    )

    def context_text(self) -> str:
        """The hit's text with its context around it (``text`` alone without ``expand``)."""
        if self.context is None:
            return self.text
        return self.context.before + self.text + self.context.after


class LegDepth(BaseModel):
    depth: int = Field(description="Candidates asked of the leg.")
    returned: int


class FusionUsed(BaseModel):
    method: str
    k: int
    adaptive: bool = Field(description='Weights chosen per query ("auto").')
    weights: dict[str, float] = Field(description="The weight each leg got.")


class RerankUsed(BaseModel):
    top_n: int
    k: int
    weights: dict[str, float] = Field(description="RRF weight of each ranking of the head.")


class SearchExplain(BaseModel):
    mode: Literal["hybrid", "dense", "lexical"]
    legs: dict[str, LegDepth]
    fusion: FusionUsed | None = None
    collapse: bool
    rerank: RerankUsed | None = None


class SearchOut(BaseModel):
    results: list[SearchHit]
    timings_ms: dict[str, float]
    next_offset: int | None = Field(
        default=None, description="The offset of the next page; null when this one is the last."
    )
    explain: SearchExplain | None = Field(default=None, description='With "explain".')


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

    @classmethod
    def of(cls, result: Embeddings, encoding_format: Literal["float", "base64"]) -> EmbeddingsOut:
        """The OpenAI body: each vector as floats, or its float32 bytes in base64."""
        data = [
            EmbeddingItem(
                index=i,
                embedding=base64.b64encode(vector.tobytes()).decode()
                if encoding_format == "base64"
                else vector.tolist(),
            )
            for i, vector in enumerate(result.vectors)
        ]
        usage = Usage(prompt_tokens=result.tokens, total_tokens=result.tokens)
        return cls(data=data, model=result.model, usage=usage)


class TokenizeIn(BaseModel):
    input: str | Annotated[list[str], Field(min_length=1)]
    model: str | None = Field(default=None, description="An embedder (default: the server's).")


class TokenizeItem(BaseModel):
    index: int
    tokens: int
    offsets: str = Field(
        description="base64 of little-endian int32 pairs (start, end), one a token, in code "
        "points of the input; no special tokens, no truncation."
    )


class TokenizeOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[TokenizeItem]
    model: str

    @classmethod
    def of(cls, model: str, spans: Sequence[Any]) -> TokenizeOut:
        """``spans``: an ``(n, 2)`` integer array (or pairs) per input."""
        data = []
        for i, pairs in enumerate(spans):
            raw = np.asarray(pairs, dtype="<i4").reshape(-1, 2).tobytes()
            data.append(TokenizeItem(index=i, tokens=len(raw) // 8,
                                     offsets=base64.b64encode(raw).decode()))  # fmt: skip
        return cls(data=data, model=model)


# ---------------------------------------------------------------- Cohere rerank


class RerankDoc(BaseModel):
    text: str


class RerankIn(BaseModel):
    query: str = Field(min_length=1)
    documents: list[str | RerankDoc] = Field(min_length=1)
    top_n: Annotated[int, Field(ge=1), _JSON_INT] | None = None
    model: str | None = None
    return_documents: StrictBool = False


class RerankResult(Out):
    index: int
    relevance_score: float
    logit: float
    document: RerankDoc | None = None


class RerankOut(BaseModel):
    id: str
    results: list[RerankResult]
    meta: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, result: Reranked, documents: Sequence[str] | None) -> RerankOut:
        """The Cohere body; ``documents``: return each result's text with it."""
        results = [RerankResult.model_validate(r) for r in result.results]
        if documents is not None:
            for r in results:
                r.document = RerankDoc(text=documents[r.index])
        return cls(id=str(uuid.uuid4()), results=results, meta={"model": result.model})
