"""Per-document budgets: decompressed bytes counted as read, text capped before tokenizing,
parser processes with a time and a memory budget, token offsets without an object per token."""

from __future__ import annotations

import io
import random
import re
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bench import hostile_files as hostile
from ragserve.ingest.chunking import _text_ranks, as_spans, chunk_document, heading_prefix
from ragserve.ingest.limits import BudgetExceeded, Limits
from ragserve.ingest.parsers import ParseError, parse_bytes
from ragserve.ingest.sources import IngestFailure
from ragserve.ingest.worker import ParsePool, decode_items, encode_items
from ragserve.types import Document, Section
from tests.ingest.helpers import MAX, ws_spans

W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def _docx(body: str, styles: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("word/document.xml", f"<w:document {W}><w:body>{body}</w:body></w:document>")
        if styles:
            zf.writestr("word/styles.xml", f"<w:styles {W}>{styles}</w:styles>")
    return buffer.getvalue()


def test_docx_stream_reads_runs_tabs_breaks_hyperlinks_and_merged_cells() -> None:
    styles = '<w:style w:styleId="H1x"><w:name w:val="heading 1"/></w:style>'
    body = (
        '<w:p><w:pPr><w:pStyle w:val="H1x"/></w:pPr><w:r><w:t>Intro</w:t></w:r></w:p>'
        "<w:p><w:r><w:t>a</w:t><w:tab/><w:t>b</w:t><w:br/><w:t>c</w:t></w:r>"
        '<w:hyperlink><w:r><w:t xml:space="preserve"> link</w:t></w:r></w:hyperlink>'
        "<w:del><w:r><w:delText>gone</w:delText></w:r></w:del></w:p>"
        '<w:tbl><w:tr><w:tc><w:tcPr><w:gridSpan w:val="2"/><w:vMerge w:val="restart"/>'
        "</w:tcPr><w:p><w:r><w:t>wide</w:t></w:r></w:p></w:tc></w:tr>"
        '<w:tr><w:tc><w:tcPr><w:gridSpan w:val="2"/><w:vMerge/></w:tcPr><w:p/></w:tc></w:tr>'
        "</w:tbl>"
    )
    doc = parse_bytes(_docx(body, styles), "t.docx", max_bytes=MAX)
    assert doc.text == "Intro\n\na\tb\nc link\n\nwide | wide\nwide | wide"
    assert doc.sections[0].headings == ("Intro",)


def test_docx_run_bomb_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = hostile.docx_run_bomb(tmp_path / "bomb.docx", xml_bytes=6_000_000)
    tracemalloc.start()
    doc = parse_bytes(path.read_bytes(), "bomb.docx", max_bytes=MAX)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert doc.text.startswith("A report hidden in a run bomb.")
    # The text itself is 136,000 characters; python-docx held the whole tree and an object per
    # run (gigabytes for the 63 MB version).
    assert peak < 20 * 1024 * 1024, peak


def test_docx_entry_that_holds_more_than_it_declares_is_refused_bounded(tmp_path: Path) -> None:
    path = hostile.lying_zip_docx(tmp_path / "lying.docx", holds=200_000_000)
    tracemalloc.start()
    with pytest.raises(ParseError, match="corrupt DOCX"):
        parse_bytes(path.read_bytes(), "lying.docx", max_bytes=MAX)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 1024 * 1024, peak  # zipfile.read() inflated the whole 200 MB


def test_a_decompressing_stream_is_counted_as_read_in_bounded_pieces() -> None:
    import gzip

    from ragserve.ingest.limits import Budget, CountingReader

    bomb = gzip.compress(b"\0" * 200_000_000, compresslevel=1)
    reader = CountingReader(gzip.GzipFile(fileobj=io.BytesIO(bomb)), Budget(1_000_000, "it"))
    tracemalloc.start()
    with pytest.raises(BudgetExceeded, match="it expands to more than 1,000,000 bytes"):
        reader.read_all()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, peak


def test_docx_declared_sizes_over_the_budget_are_refused_unread() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("word/document.xml", f"<w:document {W}><w:body/></w:document>")
        zf.writestr("word/media/a.bin", b"y" * 300_000)
    with pytest.raises(BudgetExceeded, match=r"DOCX expands to 300,\d+ bytes"):
        parse_bytes(buffer.getvalue(), "t.docx", max_bytes=MAX, limits=Limits(max_expanded=10**5))


def test_html_with_too_many_tags_is_refused_before_parsing() -> None:
    page = b"<html><body><p>hi</p>" + b"<div></div>" * 1000 + b"</body></html>"
    with pytest.raises(BudgetExceeded, match="max_html_tags"):
        parse_bytes(page, "p.html", max_bytes=MAX, limits=Limits(max_html_tags=500))


def test_text_over_max_chars_is_refused_before_tokenizing() -> None:
    calls: list[int] = []

    def spans(text: str) -> list[tuple[int, int]]:
        calls.append(len(text))
        return ws_spans(text)

    doc = Document(id="d", text="word " * 1000, title="T")
    with pytest.raises(BudgetExceeded, match="5,000 characters, over the limit of 4,999"):
        chunk_document(doc, spans, chunk_tokens=64, overlap=0, title_prefix=True, max_chars=4999)
    assert calls == []
    with pytest.raises(BudgetExceeded, match="max_document_chars"):
        parse_bytes(b"x" * 100, "a.txt", max_bytes=MAX, limits=Limits(max_chars=99))


def test_a_huge_title_is_cut_before_it_is_split_or_tokenized() -> None:
    seen: list[int] = []

    def spans(text: str) -> list[tuple[int, int]]:
        seen.append(len(text))
        return ws_spans(text)

    doc = Document(id="d", text="Short text.", title="Title " * 2_000_000)
    (chunk,) = chunk_document(doc, spans, chunk_tokens=64, overlap=0, title_prefix=True)
    assert max(seen) < 5000
    assert chunk.metadata["embed_prefix"].startswith("Title Title")
    assert len(heading_prefix("x" * 10_000_000, ())) < 5000


def _reference_ranks(text: str, spans: list[tuple[int, int]]) -> list[int]:
    """The per-token loop the vectorized ``_text_ranks`` replaced."""
    sentence_end = re.compile("[.!?\u2026][\"')\\]\u00bb\u201d\u2019]*$")
    paragraph = re.compile(r"\n[ \t\r\f\v]*\n")
    ranks = [0] * (len(spans) + 1)
    for i in range(1, len(spans)):
        gap = text[spans[i - 1][1] : spans[i][0]]
        if not gap:
            continue
        if paragraph.search(gap):
            ranks[i] = 2
        elif sentence_end.search(text[spans[i - 1][0] : spans[i - 1][1]]) or "\n" in gap:
            ranks[i] = 1
    ranks[len(spans)] = 3
    return ranks


@pytest.mark.parametrize("seed", range(5))
def test_vectorized_boundary_ranks_match_the_per_token_loop(seed: int) -> None:
    rng = random.Random(seed)
    pieces = ["word", "end.", "why?", 'said."', "(aside)", "\n", "\n\n", " \n \n", "\u2026", "\t"]
    text = "".join(rng.choice(pieces) + rng.choice([" ", "", "  ", "\n"]) for _ in range(3000))
    spans = ws_spans(text)
    assert _text_ranks(text, as_spans(spans)).tolist() == _reference_ranks(text, spans)


def test_items_cross_the_process_boundary_as_json_unchanged() -> None:
    items = [
        Document("a", "text", "T", {"k": [1, "x"]}, (Section(0, 4, ("H",), 2),)),
        IngestFailure("b.txt", "empty document", "parse_error"),
    ]
    assert decode_items(encode_items(items)) == items


def test_parser_process_out_of_time_fails_that_document_and_recovers(tmp_path: Path) -> None:
    pdf = hostile.pdf_many_pages(tmp_path / "p.pdf").read_bytes()
    pool = ParsePool(Limits(max_bytes=MAX, timeout=0.5))
    try:
        (failure,) = pool.parse(pdf, "p.pdf")
        assert isinstance(failure, IngestFailure)
        assert failure.error == "parsing took more than 0.5 s: refused (parse_timeout)"
        (doc,) = pool.parse(b"still here", "a.txt")  # a fresh worker took over
        assert isinstance(doc, Document) and doc.text == "still here"
    finally:
        pool.close()


def test_parser_process_out_of_memory_fails_that_document(tmp_path: Path) -> None:
    # 256 MiB of address space: the interpreter and the parsers fit, a 100 MB text's copies don't.
    limits = Limits(max_bytes=150_000_000, max_chars=10**9, memory=256 * 1024 * 1024)
    pool = ParsePool(limits)
    try:
        (failure,) = pool.parse(b"x " * 50_000_000, "big.txt")
        assert isinstance(failure, IngestFailure)
        assert "memory" in failure.error, failure
        (doc,) = pool.parse(b"# ok", "a.md")
        assert isinstance(doc, Document)
    finally:
        pool.close()


def test_spans_array_is_sixteen_bytes_a_token() -> None:
    spans = as_spans(ws_spans("a b c"))
    assert spans.dtype == np.int64 and spans.shape == (3, 2)


def test_a_record_over_max_chars_fails_in_the_parser_process() -> None:
    pool = ParsePool(Limits(max_bytes=MAX, max_chars=10))
    try:
        big, small = pool.parse(b'{"id": "a", "text": "eleven char"}\n{"id": "b", "text": "ok"}\n',
                                "r.jsonl")  # fmt: skip
    finally:
        pool.close()
    assert isinstance(big, IngestFailure) and big.source == "a"
    assert big.error == "the text is 11 characters, over the limit of 10 (max_document_chars)"
    assert isinstance(small, Document) and small.text == "ok"
