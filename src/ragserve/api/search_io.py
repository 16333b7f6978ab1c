"""The search route's JSON <-> :mod:`ragserve.search`'s dataclasses (nothing is computed here)."""

from __future__ import annotations

from collections.abc import Callable

from ragserve.api import schemas as s
from ragserve.context import ExpandSpec
from ragserve.fusion import FusionSpec, parse_fusion
from ragserve.highlight import HighlightSpec
from ragserve.search import SearchRequest, SearchResult


def search_request(
    body: s.SearchIn, default_fusion: Callable[[], FusionSpec], cancelled: Callable[[], bool]
) -> SearchRequest:
    """``default_fusion``: what the keys a request's ``fusion`` leaves out default to (the
    collection's fusion, else the server's); asked only when the request names a fusion. No
    ``fusion``: None, and the service uses the collection's default."""
    highlight = body.highlight
    return SearchRequest(
        query=body.query,
        top_k=body.top_k,
        offset=body.offset,
        mode=body.mode,
        rerank=body.rerank,
        rerank_top_n=body.rerank_top_n,
        filter=body.filter,
        collapse=body.collapse,
        fusion=(
            parse_fusion(body.fusion.given(), default_fusion()) if body.fusion is not None else None
        ),
        explain=body.explain,
        highlight=(
            HighlightSpec(highlight.passages, highlight.max_chars)
            if isinstance(highlight, s.HighlightIn)
            else HighlightSpec()
            if highlight
            else None
        ),
        expand=(
            ExpandSpec(body.expand.neighbors, body.expand.section, body.expand.max_tokens)
            if body.expand is not None
            else None
        ),
        cancelled=cancelled,
    )


def search_json(result: SearchResult) -> bytes:
    """The response body. Fields of options that were off are left out (not null)."""
    hits = []
    for h in result.hits:
        extra: dict[str, object] = {}
        if h.explain is not None:
            extra["explain"] = h.explain
        if h.highlights is not None:
            extra["highlights"] = h.highlights
        if h.context is not None:
            extra["context"] = h.context
        hits.append(
            s.SearchHit(
                document_id=h.document_id,
                chunk_id=h.chunk_id,
                text=h.text,
                score=h.score,
                rank=h.rank,
                metadata=h.metadata,
                **extra,
            )
        )
    out = s.SearchOut(results=hits, timings_ms=result.timings_ms, next_offset=result.next_offset)
    if result.explain is not None:
        out.explain = s.SearchExplain.model_validate(result.explain)
    return out.model_dump_json(exclude_unset=True).encode()
