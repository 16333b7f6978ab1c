"""Chunking: offsets, sizes, overlap, boundaries, prefixes; a fake tokenizer and the real one."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragserve.errors import InvalidInput
from ragserve.ingest.chunking import (
    chunk_document,
    content_budget,
    content_hash,
    embedding_text,
    heading_prefix,
)
from ragserve.types import Chunk, Document, Section
from tests.ingest.helpers import ws_spans


def tokens(text: str) -> int:
    return len(ws_spans(text))


def check_invariants(doc: Document, chunks: list[Chunk], chunk_tokens: int, overlap: int) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.document_id == doc.id
        assert doc.text[c.start : c.end] == c.text
        assert c.text == c.text.strip()  # spans start and end on tokens
        assert 1 <= tokens(c.text) == c.metadata["tokens"] <= chunk_tokens
    spans = ws_spans(doc.text)
    assert chunks[0].start == spans[0][0] and chunks[-1].end == spans[-1][1]
    for a, b in itertools.pairwise(chunks):
        if b.start >= a.end:
            assert tokens(doc.text[a.end : b.start]) == 0  # no token is left out
        shared = tokens(doc.text[b.start : a.end]) if b.start < a.end else 0
        assert shared == overlap


def sentences(n: int, words: int = 6, start: int = 0) -> str:
    return " ".join(
        " ".join(f"w{start + i}x{j}" for j in range(words - 1)) + f" end{start + i}."
        for i in range(n)
    )


def test_sizes_offsets_and_overlap() -> None:
    doc = Document("d", sentences(100))
    chunks = chunk_document(doc, ws_spans, chunk_tokens=50, overlap=10, title_prefix=False)
    check_invariants(doc, chunks, 50, 10)
    assert len(chunks) > 10


def test_prefers_paragraph_then_sentence_then_token() -> None:
    # A paragraph break after 30 tokens, sentences of 6 tokens: a 40-token chunk ends at 30.
    text = sentences(5) + "\n\n" + sentences(20, start=5)
    doc = Document("d", text)
    first = chunk_document(doc, ws_spans, chunk_tokens=40, overlap=0, title_prefix=False)[0]
    assert first.text == sentences(5)
    # No paragraph in reach: the latest sentence end (36 tokens) wins over the 40-token limit.
    doc = Document("d", sentences(30))
    first = chunk_document(doc, ws_spans, chunk_tokens=40, overlap=0, title_prefix=False)[0]
    assert first.text.endswith("end5.") and first.metadata["tokens"] == 36
    # No boundary at all in the second half of the window: cut at the token limit.
    doc = Document("d", " ".join(f"t{i}" for i in range(100)))
    first = chunk_document(doc, ws_spans, chunk_tokens=40, overlap=0, title_prefix=False)[0]
    assert first.metadata["tokens"] == 40
    # A paragraph break too early (before half the window) does not make a tiny chunk.
    doc = Document("d", "Tiny start.\n\n" + sentences(30))
    first = chunk_document(doc, ws_spans, chunk_tokens=40, overlap=0, title_prefix=False)[0]
    assert first.metadata["tokens"] >= 20


def test_section_changes_are_the_best_boundary() -> None:
    a = sentences(4)
    b = sentences(4, start=4)
    text = f"{a}\n\n{b}"
    sections = (Section(0, len(a) + 2, ("A",)), Section(len(a) + 2, len(text), ("A", "B")))
    doc = Document("d", text, title="Doc", sections=sections)
    chunks = chunk_document(doc, ws_spans, chunk_tokens=40, overlap=4, title_prefix=True)
    assert chunks[0].text == a
    assert chunks[0].metadata["headings"] == ["A"]
    # The second chunk's new content starts in section B: its headings say so.
    assert chunks[1].metadata["headings"] == ["A", "B"]
    assert chunks[1].metadata["embed_prefix"] == "Doc\nA > B\n\n"
    assert embedding_text(chunks[1]) == "Doc\nA > B\n\n" + chunks[1].text
    assert "pages" not in chunks[0].metadata


def test_title_prefix_off_keeps_embed_text_equal_to_text() -> None:
    doc = Document("d", sentences(3), title="T")
    (chunk,) = chunk_document(doc, ws_spans, chunk_tokens=50, overlap=0, title_prefix=False)
    assert "embed_prefix" not in chunk.metadata and embedding_text(chunk) == chunk.text


def test_prefix_counts_against_the_model_limit() -> None:
    doc = Document("d", sentences(50), title="A title of five words")
    chunks = chunk_document(
        doc, ws_spans, chunk_tokens=64, overlap=8, title_prefix=True, max_tokens=40
    )
    for c in chunks:
        assert tokens(embedding_text(c)) <= 40
    # A very long title is cut to a quarter of max_tokens.
    doc = Document("d", sentences(20), title=" ".join(["long"] * 100))
    chunks = chunk_document(
        doc, ws_spans, chunk_tokens=64, overlap=8, title_prefix=True, max_tokens=40
    )
    assert tokens(chunks[0].metadata["embed_prefix"]) == 10
    assert all(tokens(embedding_text(c)) <= 40 for c in chunks)


def test_content_budget() -> None:
    assert content_budget(512, ws_spans) == 510
    assert content_budget(512, ws_spans, "passage: ") == 509


def test_heading_prefix_drops_an_h1_equal_to_the_title() -> None:
    assert heading_prefix("Guide", ("Guide", "Install")) == "Guide\nInstall\n\n"
    assert heading_prefix(None, ()) == ""
    assert heading_prefix(None, ("A", "B")) == "A > B\n\n"


def test_edge_cases_and_errors() -> None:
    blank = Document("d", "   \n")
    assert chunk_document(blank, ws_spans, chunk_tokens=8, overlap=0, title_prefix=True) == []
    solo = Document("d", "  solo  ")
    (one,) = chunk_document(solo, ws_spans, chunk_tokens=8, overlap=2, title_prefix=False)
    assert (one.start, one.end, one.text) == (2, 6, "solo")
    for kwargs in ({"chunk_tokens": 8, "overlap": 8}, {"chunk_tokens": 0, "overlap": 0}):
        with pytest.raises(InvalidInput):
            chunk_document(Document("d", "x"), ws_spans, title_prefix=False, **kwargs)


def test_content_hash() -> None:
    a = Document("1", "text", "T", {"b": 1, "a": [1, 2]})
    assert content_hash(a) == content_hash(Document("other-id", "text", "T", {"a": [1, 2], "b": 1}))
    assert content_hash(a) != content_hash(Document("1", "text!", "T", a.metadata))
    assert content_hash(a) != content_hash(Document("1", "text", None, a.metadata))
    assert content_hash(a) != content_hash(Document("1", "text", "T", {"b": 2, "a": [1, 2]}))
    assert re.fullmatch(r"[0-9a-f]{64}", content_hash(a))
    with pytest.raises(InvalidInput, match="metadata is not JSON data"):
        content_hash(Document("1", "t", None, {"x": {1, 2}}))


WORDS = st.sampled_from(["alpha", "beta", "gamma", "end.", "stop!", "why?", "x", "long-word"])
SEPS = st.sampled_from([" ", " ", " ", "\n", "\n\n", "  \n \n"])


@st.composite
def documents(draw: st.DrawFn) -> Document:
    n = draw(st.integers(1, 200))
    parts = [draw(WORDS) + draw(SEPS) for _ in range(n)]
    text = draw(st.sampled_from(["", " ", "\n"])) + "".join(parts)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=5))) | {0, len(text)})
    sections = tuple(
        Section(a, b, (f"h{i}",), page=i + 1) for i, (a, b) in enumerate(itertools.pairwise(cuts))
    )
    return Document(
        "doc", text, title=draw(st.sampled_from([None, "", "A Title"])), sections=sections
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), chunk_tokens=st.integers(1, 60), data=st.data())
def test_properties(doc: Document, chunk_tokens: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, chunk_tokens - 1))
    prefix = data.draw(st.booleans())
    chunks = chunk_document(
        doc,
        ws_spans,
        chunk_tokens=chunk_tokens,
        overlap=overlap,
        title_prefix=prefix,
        max_tokens=510,
    )
    check_invariants(doc, chunks, chunk_tokens, overlap)
    for c in chunks:
        assert c.metadata["pages"] == sorted(c.metadata["pages"])
        assert tokens(embedding_text(c)) <= 510


@pytest.mark.slow
def test_real_bge_tokenizer_limits() -> None:
    from ragserve.config import Settings
    from ragserve.errors import ModelNotCached
    from ragserve.models.catalog import Catalog
    from ragserve.models.embedder import OnnxEmbedder
    from ragserve.models.manager import model_cache

    settings = Settings()
    try:
        cached = model_cache(settings).verify(Catalog.load(None).get("bge-small-en-v1.5"))
    except ModelNotCached:
        pytest.skip("bge-small-en-v1.5 is not cached: ragserve models pull bge-small-en-v1.5")
    embedder = OnnxEmbedder(cached)
    para = (
        "Dense retrieval embeds passages with a bi-encoder (e.g. BGE-small, 384-d). "
        "Überraschend: naïve café résumé — 3.5% of queries fail! Why? Because tokenizers split "
        "words like 'unbelievably' into word-pieces. "
    )
    text = "\n\n".join(para * (i % 4 + 1) for i in range(60))
    doc = Document("real", text, title="A long title about retrieval " * 3)
    for size, overlap in ((128, 16), (256, 32), (512, 64)):
        chunks = chunk_document(
            doc, embedder.token_spans, chunk_tokens=size, overlap=overlap, title_prefix=True
        )
        for a, b in itertools.pairwise(chunks):
            assert b.start < a.end
        for c in chunks:
            assert doc.text[c.start : c.end] == c.text
            assert len(embedder.token_spans(c.text)) == c.metadata["tokens"] <= size
            encoded = embedder.tokenize([embedding_text(c)], query=False)[0]
            assert len(encoded.ids) <= 512
            assert encoded.tokens[-1] == "[SEP]"  # nothing was truncated away
        if size == 128:
            # Chunks end at sentence or paragraph ends, not mid-sentence.
            assert all(re.search(r"[.!?]$", c.text) for c in chunks[:-1])
