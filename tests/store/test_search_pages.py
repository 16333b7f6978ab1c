"""Pagination over every store backend: pages of one query are slices of one ranking."""

from __future__ import annotations

import itertools

import pytest

from ragserve.context import ExpandSpec
from ragserve.search import Searcher, SearchRequest
from ragserve.store.base import Store
from ragserve.types import Chunk, Document
from tests.fakes import FakeEmbedder, FakeReranker

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


@pytest.fixture
def searcher(store: Store) -> Searcher:
    embedder = FakeEmbedder(32)
    store.create_collection("c", embedder.name, embedder.dimension)
    # 40 documents of 2 chunks, words drawn so that many chunks tie on BM25 and cosine.
    combos = itertools.cycle(itertools.combinations(WORDS, 3))
    for d in range(40):
        texts = [" ".join(next(combos)) + f" doc{d}" for _ in range(2)]
        chunks = [Chunk(f"d{d:02}", i, t) for i, t in enumerate(texts)]
        store.upsert_document(
            "c", Document(f"d{d:02}", " ".join(texts)), f"h{d}", chunks,
            embedder.embed_documents(texts),
        )  # fmt: skip
    return Searcher(store, embedder, FakeReranker())


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "hybrid"},
        {"mode": "dense"},
        {"mode": "lexical"},
        {"mode": "hybrid", "rerank": True, "rerank_top_n": 15},
        {"mode": "hybrid", "collapse": True},
        {"mode": "lexical", "collapse": True},
    ],
)
def test_pages_are_slices_of_one_ranking(searcher: Searcher, options: dict[str, object]) -> None:
    query = "alpha gamma kappa"
    # (15 and 5 per page: a hybrid ranking's depth depends on top_k above 50 / 3 with collapse)
    whole = searcher.search("c", SearchRequest(query, top_k=15, **options))  # type: ignore[arg-type]
    pages, offset = [], 0
    while offset is not None and offset < 15:
        page = searcher.search("c", SearchRequest(query, top_k=5, offset=offset, **options))  # type: ignore[arg-type]
        assert [h.rank for h in page.hits] == list(range(offset + 1, offset + 1 + len(page.hits)))
        pages += page.hits
        offset = page.next_offset
    assert [h.chunk_id for h in pages][:15] == [h.chunk_id for h in whole.hits]
    assert [h.score for h in pages][:15] == pytest.approx([h.score for h in whole.hits])
    assert len({h.chunk_id for h in pages}) == len(pages)  # no hit twice


def test_the_last_page_says_so(searcher: Searcher) -> None:
    first = searcher.search("c", SearchRequest("alpha", mode="lexical", top_k=5))
    assert first.next_offset == 5
    found = []
    offset: int | None = 0
    while offset is not None:
        page = searcher.search("c", SearchRequest("alpha", mode="lexical", top_k=5, offset=offset))
        found += [h.chunk_id for h in page.hits]
        offset = page.next_offset
    assert len(found) == len(set(found)) > 5
    beyond = searcher.search("c", SearchRequest("alpha", mode="lexical", top_k=5, offset=999))
    assert (beyond.hits, beyond.next_offset) == ((), None)


def test_neighbors_merge_to_the_document_span(store: Store) -> None:
    embedder = FakeEmbedder(16)
    store.create_collection("e", embedder.name, embedder.dimension)
    text = "one two three four five six seven eight nine ten eleven twelve thirteen"
    # Overlapping chunks of 4 words, stepping by 3: each shares one word with the next.
    words = text.split()
    starts = [text.index(w) for w in words]
    chunks = []
    for i, w in enumerate(range(0, len(words) - 1, 3)):
        last = min(w + 3, len(words) - 1)
        s, e = starts[w], starts[last] + len(words[last])
        chunks.append(Chunk("doc", i, text[s:e], s, e, {"tokens": last - w + 1}))
    store.upsert_document(
        "e", Document("doc", text), "h", chunks, embedder.embed_documents([c.text for c in chunks])
    )
    searcher = Searcher(store, embedder)
    hit = searcher.search(
        "e",
        SearchRequest("eight", mode="lexical", top_k=1, expand=ExpandSpec(neighbors=1)),
    ).hits[0]
    assert hit.chunk_index == 2 and hit.context is not None
    assert (hit.context["first_chunk"], hit.context["last_chunk"]) == (1, 3)
    span = text[chunks[1].start : chunks[3].end]
    assert hit.context["before"] + hit.text + hit.context["after"] == span
    assert (hit.context["start"], hit.context["end"]) == (chunks[1].start, chunks[3].end)
