"""explain, highlight, expand and offset on the search route: shapes, invariance, 422s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ragserve.api.schemas import SearchOut
from tests.api.test_search_fusion import DOCS as FUSION_DOCS
from tests.fakes import error_of, make_service, make_settings, ready_client

LONG = " ".join(
    f"Paragraph {i} talks about topic{i} and the memory safety of systems languages."
    for i in range(40)
)
DOCS = [*FUSION_DOCS, {"id": "long", "text": LONG}]
URL = "/v1/collections/kb/search"
ALL_ON = {"explain": True, "highlight": True, "expand": {"neighbors": 1}}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, chunk_tokens=32, chunk_overlap=4)
    for c in ready_client(settings, make_service(settings)):
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        assert c.post("/v1/collections/kb/documents", json={"documents": DOCS}).status_code == 200
        yield c


def search(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(URL, json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


BASE = ("document_id", "chunk_id", "text", "score", "rank", "metadata")


@pytest.mark.parametrize(
    "body",
    [
        {"query": "memory safety language"},
        {"query": "memory safety language", "rerank": True},
        {"query": "programming topic3", "mode": "lexical"},
        {"query": "programming topic3", "mode": "dense", "collapse": True},
    ],
)
def test_options_off_leave_the_response_as_it_was_and_on_leave_the_hits(
    client: TestClient, body: dict[str, Any]
) -> None:
    off = search(client, body)
    assert set(off) == {"results", "timings_ms", "next_offset"}
    assert all(set(h) == set(BASE) for h in off["results"])
    assert set(off["timings_ms"]) == {"embed", "dense", "lexical", "fuse", "rerank", "total"}
    on = search(client, {**body, **ALL_ON})
    assert [{k: h[k] for k in BASE} for h in on["results"]] == off["results"]
    assert all({"explain", "highlights", "context"} <= set(h) for h in on["results"])
    assert {"highlight", "expand"} <= set(on["timings_ms"])


def test_explain_reports_each_leg_the_fusion_and_the_rerank(client: TestClient) -> None:
    query = "memory safety language"
    dense = search(client, {"query": query, "mode": "dense", "top_k": 50})["results"]
    lexical = search(client, {"query": query, "mode": "lexical", "top_k": 50})["results"]
    body = {"query": query, "explain": True, "fusion": {"weights": "auto"}, "top_k": 50}
    out = search(client, body)
    info = out["explain"]
    assert info["mode"] == "hybrid" and info["rerank"] is None
    assert info["fusion"]["method"] == "minmax" and info["fusion"]["adaptive"] is True
    assert sum(info["fusion"]["weights"].values()) == pytest.approx(1.0, abs=1e-3)
    assert info["legs"]["dense"]["returned"] >= len(dense)
    for hit in out["results"]:
        ex = hit["explain"]
        assert ex["fused"]["rank"] == hit["rank"] and ex["fused"]["score"] == hit["score"]
        for name, leg in (("dense", dense), ("lexical", lexical)):
            ranked = [h["chunk_id"] for h in leg]
            if hit["chunk_id"] in ranked:
                assert ex[name]["rank"] == ranked.index(hit["chunk_id"]) + 1
                assert ex[name]["score"] == pytest.approx(leg[ex[name]["rank"] - 1]["score"])
            else:
                assert name not in ex
    reranked = search(client, {"query": query, "explain": True, "rerank": True, "top_k": 50})
    assert reranked["explain"]["rerank"]["top_n"] == min(20, len(reranked["results"]))
    assert set(reranked["explain"]["rerank"]["weights"]) == {"fused", "dense", "lexical", "rerank"}
    ranks = sorted(h["explain"]["rerank"]["rank"] for h in reranked["results"][:20])
    assert ranks == list(range(1, len(ranks) + 1))


def test_highlights_point_at_the_query_terms(client: TestClient) -> None:
    body = {"query": "the memory SAFETY", "highlight": {"passages": 2, "max_chars": 60}}
    for hit in search(client, body)["results"]:
        for p in hit["highlights"]:
            assert hit["text"][p["start"] : p["end"]] == p["text"]
            assert len(p["text"]) <= 60
            for s, e in p["matches"]:
                assert p["text"][s:e].lower() in {"memory", "safety"}  # "the": a stop word
    body = {"query": "memory safety", "highlight": True, "mode": "lexical", "filter": {}}
    hits = search(client, {**body, "top_k": 50})["results"]
    (rust,) = (h for h in hits if h["document_id"] == "rust")
    first = rust["highlights"][0]
    assert first["text"] == rust["text"]  # shorter than max_chars: all of it
    assert [first["text"][s:e] for s, e in first["matches"]] == ["memory", "safety"]


def test_expand_merges_neighbours_within_the_budget(client: TestClient) -> None:
    hit = search(client, {"query": "topic20", "mode": "lexical", "top_k": 1})["results"][0]
    assert hit["document_id"] == "long"
    doc = client.get("/v1/collections/kb/documents/long").json()
    chunks = {c["index"]: c for c in doc["chunks"]}
    i = int(hit["chunk_id"].split("#")[1])
    body = {"query": "topic20", "mode": "lexical", "top_k": 1, "expand": {"neighbors": 1}}
    out = search(client, body)
    ctx = out["results"][0]["context"]
    assert (ctx["first_chunk"], ctx["last_chunk"]) == (i - 1, i + 1)
    (typed,) = SearchOut.model_validate(out).results  # what the Python client returns
    assert typed.context_text() == LONG[chunks[i - 1]["start"] : chunks[i + 1]["end"]]
    assert typed.model_copy(update={"context": None}).context_text() == hit["text"]
    assert (
        ctx["before"] + hit["text"] + ctx["after"]
        == (LONG[chunks[i - 1]["start"] : chunks[i + 1]["end"]])
    )
    assert ctx["before"] == LONG[chunks[i - 1]["start"] : chunks[i]["start"]]
    assert not ctx["truncated"]
    tight = {**body, "expand": {"neighbors": 3, "max_tokens": 40}}
    ctx = search(client, tight)["results"][0]["context"]
    assert ctx["truncated"] and ctx["tokens"] <= 40
    assert ctx["first_chunk"] <= i <= ctx["last_chunk"]


def test_offset_pages_and_next_offset(client: TestClient) -> None:
    whole = search(client, {"query": "language memory", "top_k": 9})
    pages = []
    offset: int | None = 0
    while offset is not None:
        out = search(client, {"query": "language memory", "top_k": 3, "offset": offset})
        pages += out["results"]
        offset = out["next_offset"]
    assert [h["chunk_id"] for h in pages[:9]] == [h["chunk_id"] for h in whole["results"]]
    assert [h["rank"] for h in pages] == list(range(1, len(pages) + 1))


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"offset": -1}, "offset"),
        ({"offset": 1001}, "offset"),
        ({"offset": "3"}, "offset"),
        ({"offset": 1.5}, "offset"),
        ({"offset": True}, "offset"),
        ({"explain": "yes"}, "explain"),
        ({"highlight": {"passages": 0}}, "passages"),
        ({"highlight": {"max_chars": 5}}, "max_chars"),
        ({"highlight": {"colour": "red"}}, "colour"),
        ({"expand": {"neighbors": 21}}, "neighbors"),
        ({"expand": {"max_tokens": 0}}, "max_tokens"),
        ({"expand": {}}, "neighbors"),
        ({"expand": {"section": "yes"}}, "section"),
        ({"expand": True}, "expand"),
    ],
)
def test_bad_values_are_422(client: TestClient, extra: dict[str, Any], fragment: str) -> None:
    r = client.post(URL, json={"query": "memory", **extra})
    assert r.status_code == 422, r.text
    assert fragment in error_of(r)["message"]
