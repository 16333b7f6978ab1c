"""Parsers on small real files: text, structure, and each per-document error."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragserve.errors import PayloadTooLarge
from ragserve.ingest.chunking import chunk_document
from ragserve.ingest.parsers import (
    FileType,
    ParseError,
    UnsupportedType,
    detect_type,
    parse_bytes,
    parse_file,
    record_to_document,
)
from ragserve.types import Document
from tests.ingest.helpers import (
    HTML_PAGE,
    MARKDOWN,
    MAX,
    encrypt_pdf,
    make_docx,
    make_pdf,
    ws_spans,
)


def covers(doc: Document) -> None:
    """Sections are in order and cover the whole text."""
    assert doc.sections, "no sections"
    assert doc.sections[0].start == 0
    assert doc.sections[-1].end == len(doc.text)
    for a, b in zip(doc.sections, doc.sections[1:], strict=False):
        assert a.end == b.start


def test_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"\xef\xbb\xbfFirst line.\r\n\r\nSecond paragraph.")
    doc = parse_file(path, max_bytes=MAX)
    assert doc.text == "First line.\n\nSecond paragraph."
    assert doc.id == path.as_posix()
    assert doc.metadata["content_type"] == "text/plain"
    assert doc.metadata["filename"] == "notes.txt"
    covers(doc)


def test_pdf_pages_reach_chunk_metadata(tmp_path: Path) -> None:
    pages = [[f"Page {p} sentence {i} about retrieval." for i in range(5)] for p in (1, 2, 3)]
    doc = parse_file(make_pdf(tmp_path / "a.pdf", pages), max_bytes=MAX, doc_id="paper")
    assert doc.id == "paper" and doc.title == "Test PDF"
    assert doc.metadata["pages"] == 3
    assert [s.page for s in doc.sections] == [1, 2, 3]
    assert "Page 2 sentence 4 about retrieval." in doc.text
    covers(doc)
    for s in doc.sections:
        assert f"Page {s.page} sentence 0" in doc.text[s.start : s.end]
    chunks = chunk_document(doc, ws_spans, chunk_tokens=60, overlap=5, title_prefix=False)
    assert chunks[0].metadata["pages"] == [1, 2]
    assert chunks[-1].metadata["pages"][-1] == 3
    one_page = chunk_document(doc, ws_spans, chunk_tokens=30, overlap=0, title_prefix=False)
    assert [c.metadata["pages"] for c in one_page] == [[1], [2], [3]]  # ends at page breaks


def test_encrypted_pdf_is_refused(tmp_path: Path) -> None:
    plain = make_pdf(tmp_path / "a.pdf", [["secret text"]])
    locked = encrypt_pdf(plain, tmp_path / "locked.pdf", user_password="pw")
    with pytest.raises(ParseError, match="encrypted PDF: a password is required"):
        parse_file(locked, max_bytes=MAX)


def test_pdf_with_only_an_owner_password_opens(tmp_path: Path) -> None:
    plain = make_pdf(tmp_path / "a.pdf", [["readable text"]])
    doc = parse_file(encrypt_pdf(plain, tmp_path / "b.pdf", user_password=""), max_bytes=MAX)
    assert doc.text == "readable text"


def test_corrupt_pdf(tmp_path: Path) -> None:
    good = make_pdf(tmp_path / "a.pdf", [["text"]]).read_bytes()
    with pytest.raises(ParseError, match="corrupt PDF"):
        parse_bytes(good[:300], "broken.pdf", max_bytes=MAX)


def test_pdf_without_text(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="no extractable text"):
        parse_file(make_pdf(tmp_path / "blank.pdf", [[], []]), max_bytes=MAX)


def test_docx_headings_from_styles(tmp_path: Path) -> None:
    doc = parse_file(make_docx(tmp_path / "r.docx"), max_bytes=MAX)
    assert doc.title == "Quarterly Report"
    assert "The scope covers three regions." in doc.text
    assert "- first bullet\n- second bullet" in doc.text
    assert "region | growth\nnorth | 12%" in doc.text
    covers(doc)
    by_text = {doc.text[s.start : s.end].strip(): s.headings for s in doc.sections}
    assert by_text["Scope\n\nThe scope covers three regions."] == ("Introduction", "Scope")
    chunks = chunk_document(doc, ws_spans, chunk_tokens=12, overlap=0, title_prefix=True)
    paths = [c.metadata.get("headings") for c in chunks]
    assert ["Introduction", "Scope"] in paths and ["Results"] in paths
    scope = next(c for c in chunks if c.metadata.get("headings") == ["Introduction", "Scope"])
    assert scope.metadata["embed_prefix"] == "Quarterly Report\nIntroduction > Scope\n\n"


def test_docx_zip_bomb_is_refused() -> None:
    import io
    import zipfile

    from ragserve.ingest.limits import Limits

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("word/document.xml", b"<w/>")
        zf.writestr("word/media/huge.bin", b"\x00" * 2_000_000)
    limits = Limits(max_bytes=MAX, max_expanded=1_000_000)
    with pytest.raises(ParseError, match=r"DOCX expands to 2,000,004 bytes .* \(ZIP bomb\?\)"):
        parse_bytes(buffer.getvalue(), "bomb.docx", max_bytes=MAX, limits=limits)


def test_html_keeps_the_article_and_drops_chrome(tmp_path: Path) -> None:
    doc = parse_bytes(HTML_PAGE.encode(), "page.html", max_bytes=MAX)
    assert doc.title == "Grounding models"
    assert "Chunks of each document are embedded as vectors." in doc.text
    assert "hybrid search with BM25 and dense vectors" in doc.text  # markup removed
    for chrome in ("Pricing and plans", "newsletter", "All rights reserved", "Related posts"):
        assert chrome not in doc.text
    covers(doc)
    headings = {s.headings for s in doc.sections}
    assert ("Grounding models", "How retrieval works") in headings


def test_html_short_page_chrome_is_removed_but_article_header_kept() -> None:
    page = (
        b"<html><body><header>Site name</header><nav>Home About</nav>"
        b"<article><header><h1>Hello</h1></header><p>Body text.</p></article>"
        b"<footer>foot</footer></body></html>"
    )
    doc = parse_bytes(page, "short.html", max_bytes=MAX)
    assert doc.text == "Hello\n\nBody text."
    assert doc.sections[0].headings == ("Hello",)


def test_html_by_content_type_and_sniffing() -> None:
    assert detect_type(b"<!DOCTYPE html><html>", "upload") is FileType.HTML
    assert detect_type(b"x", "upload", "text/html; charset=utf-8") is FileType.HTML
    assert detect_type(b"%PDF-1.7", "upload", "application/octet-stream") is FileType.PDF
    assert detect_type(b"hello", "README") is FileType.TEXT


def test_markdown_structure() -> None:
    doc = parse_bytes(MARKDOWN.encode(), "guide.md", max_bytes=MAX)
    assert doc.title == "Front Matter Title"
    assert "Intro paragraph with bold and a link." in doc.text  # rendered, not markup
    assert "- first step\n- second step" in doc.text
    assert "ragserve serve" in doc.text and "name | value\na | 1" in doc.text
    assert "title:" not in doc.text
    covers(doc)
    heads = [s.headings for s in doc.sections]
    assert heads == [
        ("Guide",),
        ("Guide", "Install"),
        ("Guide", "Install", "Linux"),
        ("Guide", "Usage"),
    ]
    linux = doc.sections[2]
    assert doc.text[linux.start : linux.end].strip() == "Linux\n\nUse the package manager."


def test_json_record_and_its_errors() -> None:
    doc = parse_bytes(b'{"id": 7, "text": "hi", "title": "T", "metadata": {"k": 1}}', "r.json",
                      max_bytes=MAX)  # fmt: skip
    assert (doc.id, doc.text, doc.title, doc.metadata) == ("7", "hi", "T", {"k": 1})
    cases = {
        "has no 'text'": {"id": "a"},
        "'text' must be a string, got a number": {"id": "a", "text": 3},
        "'text' is empty": {"id": "a", "text": "  "},
        "'title' must be a string": {"id": "a", "text": "x", "title": ["t"]},
        "'metadata' must be an object, got an array": {"id": "a", "text": "x", "metadata": []},
        "unknown field\\(s\\) 'body'": {"id": "a", "text": "x", "body": "y"},
        "'id' must be a string or an integer, got a boolean": {"id": True, "text": "x"},
        "record has no 'id'": {"text": "x"},
    }
    for message, record in cases.items():
        with pytest.raises(ParseError, match=message):
            record_to_document(record, fallback_id=None, max_bytes=MAX)
    with pytest.raises(ParseError, match="must be a JSON object, got an array"):
        record_to_document([1], fallback_id="x", max_bytes=MAX)
    with pytest.raises(PayloadTooLarge, match="over the limit of 10"):
        record_to_document({"id": "a", "text": "x" * 11}, fallback_id=None, max_bytes=10)


@pytest.mark.parametrize(
    ("name", "data", "error", "message"),
    [
        ("blob.txt", bytes(range(256)) * 3, ParseError, "binary content"),
        ("doc.txt", b"%PDF-1.4 pretending", ParseError, "content is a PDF"),
        ("bad.txt", b"good line\ncaf\xe9 au lait", ParseError,
         r"invalid UTF-8 at byte 13 \(line 2, column 4\): byte 0xe9"),
        ("empty.txt", b"", ParseError, "empty document"),
        ("blank.md", b"  \n\n ", ParseError, "empty document"),
        ("fake.pdf", b"hello, not a pdf", ParseError, "does not start with a %PDF- header"),
        ("fake.docx", b"hello", ParseError, "not a DOCX"),
        ("zip.docx", b"PK\x03\x04" + b"\x00" * 40, ParseError, "corrupt DOCX"),
        ("tool.exe", b"MZ\x90\x00", UnsupportedType, r"unsupported file type '\.exe'"),
        ("big.txt", b"x" * 1001, PayloadTooLarge, "1,001 bytes, over the limit of 1,000"),
        ("s.html", b"<html><style>p{}</style><script>var a</script></html>", ParseError,
         "empty document"),
        ("many.jsonl", b'{"text": "a"}\n{"text": "b"}\n', ParseError, "holds 2 records"),
        ("bad.json", b'{"text": ', ParseError, "invalid JSON at line 1"),
    ],
)  # fmt: skip
def test_per_document_errors(name: str, data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        parse_bytes(data, name, max_bytes=1000)


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.md"
    path.write_bytes(b"# x\n" * 100)
    with pytest.raises(PayloadTooLarge, match="the file is 400 bytes"):
        parse_file(path, max_bytes=399)
    with pytest.raises(ParseError, match="cannot read"):
        parse_file(tmp_path / "missing.txt", max_bytes=MAX)


def test_utf16_with_bom_is_text() -> None:
    doc = parse_bytes("héllo wörld".encode("utf-16"), "u.txt", max_bytes=MAX)
    assert doc.text == "héllo wörld"
