"""search_json writes exactly what the response models would (``SearchOut.model_dump_json``)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragserve.api import schemas as s
from ragserve.api.search_io import search_json
from ragserve.context import ExpandSpec
from ragserve.highlight import HighlightSpec
from ragserve.search import SearchHit, SearchRequest, SearchResult
from ragserve.service import RetrievalService
from ragserve.types import Document
from tests.api.test_search_explain import DOCS
from tests.fakes import make_service, make_settings


def reference_json(result: SearchResult) -> bytes:
    """What search_json wrote before it skipped the models: every hit validated into one."""
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
                **extra,  # type: ignore[arg-type]
            )
        )
    out = s.SearchOut(results=hits, timings_ms=result.timings_ms, next_offset=result.next_offset)
    if result.explain is not None:
        out.explain = s.SearchExplain.model_validate(result.explain)
    return out.model_dump_json(exclude_unset=True).encode()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RetrievalService]:
    svc = make_service(make_settings(tmp_path, chunk_tokens=32, chunk_overlap=4))
    try:
        svc.create_collection("kb")
        meta = [{"n": i, "f": i / 3, "tag": "\u00e9"} for i in range(len(DOCS))]
        svc.ingest(
            "kb",
            [Document(d["id"], d["text"], metadata=m) for d, m in zip(DOCS, meta, strict=True)],
        )
        yield svc
    finally:
        svc.close()


OPTIONS: list[dict[str, Any]] = [
    {},
    {"explain": True},
    {"highlight": HighlightSpec(passages=3, max_chars=40)},
    {"expand": ExpandSpec(neighbors=2)},
    {"expand": ExpandSpec(section=True, max_tokens=8)},
    {"explain": True, "highlight": HighlightSpec(), "expand": ExpandSpec(neighbors=1)},
]
SHAPES: list[dict[str, Any]] = [
    {"query": "memory safety language"},
    {"query": "memory safety language", "rerank": True, "rerank_top_n": 3},
    {"query": "programming topic3", "mode": "lexical", "top_k": 3, "offset": 2},
    {"query": "programming topic3", "mode": "dense", "collapse": True},
    {"query": "nothing matches zzz", "mode": "lexical"},
]


@pytest.mark.parametrize(("shape", "options"), list(itertools.product(SHAPES, OPTIONS)))
def test_search_json_is_the_models_json(
    service: RetrievalService, shape: dict[str, Any], options: dict[str, Any]
) -> None:
    result = service.search("kb", SearchRequest(**shape, **options))
    assert search_json(result) == reference_json(result)


def test_odd_values_come_out_as_the_models_write_them() -> None:
    hit = SearchHit(
        document_id="d\u00e9\n",
        chunk_id='c"1',
        chunk_index=0,
        text="x\u2028y \U0001f600",
        score=math.nan,
        rank=1,
        metadata={"a": [1, 2.5, None, True], "b": {"c": "\x00"}, "inf": math.inf},
        explain={"rerank": {"rank": 1, "logit": -math.inf}, "dense": {"rank": 2, "score": 1}},
        highlights=[{"start": 0, "end": 1, "text": "x", "matches": [[0, 1]]}],
        context={
            "before": "w\u00e9\n",
            "after": "",
            "start": -1,
            "end": -1,
            "first_chunk": 0,
            "last_chunk": 0,
            "tokens": 1,
            "truncated": False,
        },
    )
    result = SearchResult(
        (hit,),
        {"embed": 1, "total": 2.5},
        "hybrid",
        reranked=True,
        next_offset=None,
        explain={
            "mode": "hybrid",
            "legs": {"dense": {"depth": 50, "returned": 1}},
            "fusion": {"method": "rrf", "k": 60, "adaptive": False, "weights": {"dense": 1}},
            "collapse": False,
            "rerank": None,
        },
    )
    assert search_json(result) == reference_json(result)
