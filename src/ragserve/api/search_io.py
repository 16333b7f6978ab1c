"""The search route's JSON <-> :mod:`ragserve.search`'s dataclasses (nothing is computed here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pydantic_core import to_json

from ragserve.api import schemas as s
from ragserve.context import ExpandSpec
from ragserve.fusion import FusionSpec, parse_fusion
from ragserve.highlight import HighlightSpec
from ragserve.search import SearchHit, SearchRequest, SearchResult


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


#: The order of ``HitExplain``'s fields (its JSON keys come out in this order).
_HIT_EXPLAIN = tuple(s.HitExplain.model_fields)


def search_json(result: SearchResult) -> bytes:
    """The response body (``schemas.SearchOut``). Fields of options that were off are left out
    (not null).

    The hits are written as plain dicts in the models' key order with the models' types
    (``pydantic_core.to_json``) rather than validated into ``SearchHit`` models first: the
    core's values already have those types, and validating each hit's explain, passages and
    context cost more than writing them. tests/api/test_search_json.py checks the bytes are
    the models' own ``model_dump_json(exclude_unset=True)``."""
    out: dict[str, object] = {
        "results": [_hit(h) for h in result.hits],
        "timings_ms": {k: float(v) for k, v in result.timings_ms.items()},
        "next_offset": result.next_offset,
    }
    if result.explain is not None:
        explain = s.SearchExplain.model_validate(result.explain)
        out["explain"] = explain.model_dump(mode="json", exclude_unset=True)
    return to_json(out, inf_nan_mode="null")


def _hit(h: SearchHit) -> dict[str, object]:
    hit: dict[str, object] = {
        "document_id": h.document_id,
        "chunk_id": h.chunk_id,
        "text": h.text,
        "score": float(h.score),
        "rank": h.rank,
        "metadata": h.metadata,
    }
    if h.explain is not None:
        hit["explain"] = {leg: _leg(h.explain[leg]) for leg in _HIT_EXPLAIN if leg in h.explain}
    if h.highlights is not None:
        hit["highlights"] = [
            {
                "start": p["start"],
                "end": p["end"],
                "text": p["text"],
                "matches": p["matches"],
            }
            for p in h.highlights
        ]
    if h.context is not None:
        c = h.context
        hit["context"] = {
            "before": c["before"],
            "after": c["after"],
            "start": c["start"],
            "end": c["end"],
            "first_chunk": c["first_chunk"],
            "last_chunk": c["last_chunk"],
            "tokens": c["tokens"],
            "truncated": c["truncated"],
        }
    return hit


def _leg(leg: Mapping[str, object]) -> dict[str, object]:
    """A ``LegRank`` (rank, score) or a ``RerankRank`` (rank, logit)."""
    value = "logit" if "logit" in leg else "score"
    return {"rank": leg["rank"], value: float(leg[value])}  # type: ignore[arg-type]
