"""Parsers: bytes of one file (or one JSON record) -> a :class:`~ragserve.types.Document`.

Formats and the library that carries each: plain text; Markdown (``markdown-it-py``: headings give
the structure, the text is the rendered plain text, not the markup); HTML (``selectolax`` and
``resiliparse`` in :mod:`ragserve.ingest.html`: the main content as headings and blocks, chrome
dropped); PDF (``pypdf``: text per
page, one section per page); DOCX (``python-docx``: headings from the ``Heading N`` styles); JSON
records (``id``, ``text``, optional ``title`` and ``metadata``).

The type comes from the file extension, else the HTTP content type, else the content; the content
must agree with the name (a ``.txt`` holding binary bytes, a ``.pdf`` without a PDF header are
refused). Every problem with one document raises :class:`ParseError` (or
:class:`~ragserve.errors.PayloadTooLarge` for the size limit) with a message fit for the user; no
other exception leaves this module for bad input.

Every document's ``metadata`` holds ``source`` (the path or upload name), ``filename`` and
``content_type``; PDFs add ``pages``. ``sections`` cover the whole text, in order.
"""

from __future__ import annotations

import io
import re
from functools import cache
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from ragserve.ingest.detect import (
    SNIFF_BYTES,
    FileType,
    ParseError,
    UnsupportedType,
    check_size,
    decode_text,
    detect_type,
)
from ragserve.ingest.filetypes import Parsed, Signature, register_file_type
from ragserve.ingest.limits import Budget, BudgetExceeded, Limits
from ragserve.ingest.records import record_to_document, single_record
from ragserve.types import Document, JSONDict, Section

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.token import Token

__all__ = [
    "FileType",
    "ParseError",
    "UnsupportedType",
    "check_chars",
    "check_size",
    "decode_text",
    "detect_type",
    "parse_bytes",
    "parse_file",
    "record_to_document",
]


# ------------------------------------------------------------------------------ entry points


def parse_file(
    path: Path, *, max_bytes: int, doc_id: str | None = None, source: str | None = None
) -> Document:
    """Parse one file into one document (the size is checked before reading).

    ``doc_id`` defaults to ``source``, which defaults to the path as given (POSIX form). JSON and
    JSONL files hold records: read them with :mod:`ragserve.ingest.sources` (``iter_file``).
    """
    source = source or path.as_posix()
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ParseError(f"cannot read {source}: {exc.strerror or exc}") from None
    check_size(size, max_bytes, "the file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read {source}: {exc.strerror or exc}") from None
    return parse_bytes(data, path.name, max_bytes=max_bytes, doc_id=doc_id, source=source)


def parse_bytes(
    data: bytes,
    filename: str,
    content_type: str | None = None,
    *,
    max_bytes: int,
    doc_id: str | None = None,
    source: str | None = None,
    limits: Limits | None = None,
) -> Document:
    """Parse an upload (or a file's bytes) into one document.

    A JSON file holding one record object is accepted; arrays and JSONL hold many records: use
    ``ragserve.ingest.sources.iter_bytes``, which takes every type. ``limits`` (default: the
    defaults of :class:`Limits` with ``max_bytes``) bound what parsing may expand to.
    """
    limits = limits or Limits(max_bytes=max_bytes)
    check_size(len(data), max_bytes, "the document")
    if not data.strip():
        raise ParseError("empty document")
    kind = detect_type(data[:SNIFF_BYTES], filename, content_type)
    source = source or filename
    meta: JSONDict = {"source": source, "filename": PurePath(filename).name}
    doc_id = doc_id or source
    if kind.parse is None:
        return single_record(data, kind, doc_id, max_bytes)
    parsed = kind.parse(data, limits)
    meta["content_type"] = kind.content_type
    meta.update(parsed.metadata)
    check_chars(len(parsed.text), limits.max_chars)
    if not parsed.text.strip():
        raise ParseError(f"empty document (no text in this {kind.name})")
    return Document(
        id=doc_id,
        text=parsed.text,
        title=parsed.title,
        metadata=meta,
        sections=tuple(parsed.sections),
    )


# ---------------------------------------------------------------------- structure from blocks


class _Builder:
    """Accumulates text blocks and headings into text + sections that cover it."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []
        self.section_start = 0
        self.title: str | None = None
        self.group: str | None = None

    def _append(self, text: str, sep: str) -> None:
        if self.parts:
            self.parts.append(sep)
            self.length += len(sep)
        self.parts.append(text)
        self.length += len(text)

    def heading(self, level: int, text: str) -> None:
        text = " ".join(text.split())
        if not text:
            return
        if self.title is None and level == 1:
            self.title = text
        start = self.length + (2 if self.parts else 0)
        self._close(start)
        while self.path and self.path[-1][0] >= level:
            self.path.pop()
        self.path.append((level, text))
        self._append(text, "\n\n")
        self.group = None

    def block(self, text: str, group: str | None = None) -> None:
        """Add a block; consecutive blocks of one ``group`` (list items, table rows) share a line
        break, anything else is separated by a blank line."""
        text = text.strip("\n")
        if text.strip():
            self._append(text, "\n" if group and group == self.group else "\n\n")
            self.group = group

    def _close(self, end: int) -> None:
        if end > self.section_start:
            headings = tuple(h for _, h in self.path)
            self.sections.append(Section(self.section_start, end, headings))
        self.section_start = end

    def build(self) -> Parsed:
        self._close(self.length)
        return Parsed("".join(self.parts), self.title, self.sections)


# ------------------------------------------------------------------------------------ parsers


def check_chars(chars: int, max_chars: int, what: str = "the text") -> None:
    """Refuse a text longer than ``max_chars`` (checked before anything tokenizes it)."""
    if chars > max_chars:
        raise BudgetExceeded(
            f"{what} is {chars:,} characters, over the limit of {max_chars:,} (max_document_chars)"
        )


def _parse_text(data: bytes, limits: Limits) -> Parsed:
    text = decode_text(data)
    check_chars(len(text), limits.max_chars)
    return Parsed(text, None, [Section(0, len(text))] if text else [])


_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n(?:---|\.\.\.)\n", re.DOTALL)


@cache
def _markdown() -> MarkdownIt:
    """The parser, built (and markdown-it imported: ~1 MB, 68 modules) by the first Markdown."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table")


def _parse_markdown(data: bytes, limits: Limits) -> Parsed:
    text = decode_text(data)
    check_chars(len(text), limits.max_chars)
    return markdown_to_parsed(text)


def markdown_to_parsed(source: str) -> Parsed:
    front_title: str | None = None
    match = _FRONT_MATTER.match(source)
    if match:
        for line in match.group(1).splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "title" and value.strip():
                front_title = value.strip().strip("\"'")
        source = source[match.end() :]
    builder = _Builder()
    tokens = _markdown().parse(source)
    lists: list[int] = []  # item counters per nesting level (0 for bullets)
    item_first = False
    row: list[str] | None = None
    heading_level = 0
    for tok in tokens:
        kind = tok.type
        if kind == "heading_open":
            heading_level = int(tok.tag[1:])
        elif kind == "heading_close":
            heading_level = 0
        elif kind in ("bullet_list_open", "ordered_list_open"):
            lists.append(1 if kind == "ordered_list_open" else 0)
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
        elif kind == "list_item_open":
            item_first = True
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close" and row is not None:
            if any(row):
                builder.block(" | ".join(row), "row")
            row = None
        elif kind == "inline":
            text = _inline_text(tok)
            if heading_level:
                builder.heading(heading_level, text)
            elif row is not None:
                row.append(" ".join(text.split()))
            elif lists and item_first:
                marker = f"{lists[-1]}." if lists[-1] else "-"
                if lists[-1]:
                    lists[-1] += 1
                indent = "  " * (len(lists) - 1)
                builder.block(f"{indent}{marker} {text}", "item")
                item_first = False
            else:
                builder.block(text)
        elif kind in ("fence", "code_block"):
            builder.block(tok.content)
        elif kind == "html_block":
            builder.block(_html_fragment_text(tok.content))
    parsed = builder.build()
    parsed.title = front_title or parsed.title
    return parsed


def _inline_text(tok: Token) -> str:
    out: list[str] = []
    for child in tok.children or []:
        if child.type in ("text", "code_inline"):
            out.append(child.content)
        elif child.type == "softbreak" or child.type == "hardbreak":
            out.append("\n")
        elif child.type == "image":
            out.append(child.content)
    return "".join(out)


def _html_fragment_text(html: str) -> str:
    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    tree = HTMLParser(html)
    for node in tree.css("script, style"):
        node.decompose()
    return (tree.body.text(separator=" ") if tree.body else tree.text(separator=" ")).strip()


def _parse_html(data: bytes, limits: Limits) -> Parsed:
    from ragserve.ingest.html import extract_html

    # Every DOM node costs a few hundred bytes: a page of 5 million empty tags is 50 MB on disk
    # and gigabytes parsed. Counting "<" bounds the tags from above, before any parsing.
    tags = data.count(b"<")
    if tags > limits.max_html_tags:
        raise BudgetExceeded(
            f"HTML with up to {tags:,} tags, over the limit of {limits.max_html_tags:,}: refused "
            "(max_html_tags)"
        )
    content = extract_html(data)
    builder = _Builder()
    for block in content.blocks:
        if block.level:
            builder.heading(block.level, block.text)
        else:
            builder.block(block.text, block.group)
    parsed = builder.build()
    parsed.title = content.title or parsed.title
    parsed.metadata["extractor"] = content.method
    return parsed


def _parse_pdf(data: bytes, limits: Limits) -> Parsed:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # owner-password-only PDFs open with an empty one
            except (DependencyError, NotImplementedError) as exc:
                raise ParseError(f"encrypted PDF that cannot be decrypted here: {exc}") from None
            if not opened:
                raise ParseError("encrypted PDF: a password is required")
        pages = [page.extract_text() or "" for page in reader.pages]
        info = reader.metadata
        title = str(info.title).strip() if info is not None and info.title else None
    except ParseError:
        raise
    except FileNotDecryptedError:
        raise ParseError("encrypted PDF: a password is required") from None
    except LimitReachedError as exc:  # pypdf's own budgets (page tree entries, stream sizes)
        raise BudgetExceeded(f"PDF over a parser limit: {exc}") from None
    # pypdf raises many exception types on malformed input; this is where they enter.
    except Exception as exc:  # noqa: BLE001
        raise ParseError(f"corrupt PDF: {type(exc).__name__}: {exc}") from None
    parts: list[str] = []
    sections: list[Section] = []
    length = 0
    for number, raw in enumerate(pages, start=1):
        text = "\n".join(line.rstrip() for line in raw.replace("\r", "\n").split("\n")).strip()
        if not text:
            continue
        if parts:
            parts.append("\n\n")
            length += 2
        sections.append(Section(length, length + len(text), (), number))
        parts.append(text)
        length += len(text)
    if not parts:
        raise ParseError(f"no extractable text in this PDF ({len(pages)} pages; scanned? no OCR)")
    # Sections cover the text: each page section takes the separator that follows it.
    covered = [
        Section(s.start, sections[i + 1].start if i + 1 < len(sections) else length, (), s.page)
        for i, s in enumerate(sections)
    ]
    return Parsed("".join(parts), title or None, covered, {"pages": len(pages)})


_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def _parse_docx(data: bytes, limits: Limits) -> Parsed:
    from ragserve.ingest.office import read_docx  # lxml: loaded with the first DOCX

    budget = Budget(limits.max_expanded, "the DOCX")
    blocks, core_title = read_docx(data, budget)
    builder = _Builder()
    style_title: str | None = None
    for block in blocks:
        if block.rows is not None:
            for row in block.rows:
                cells = [" ".join(c.split()) for c in row]
                if any(cells):
                    builder.block(" | ".join(cells), "row")
            continue
        text, style = block.text, block.style
        level = _HEADING_STYLE.match(style)
        if level:
            builder.heading(int(level.group(1)), text)
        elif style.lower() == "title":
            style_title = style_title or " ".join(text.split()) or None
            builder.block(text)
        elif style.lower().startswith("list"):
            builder.block(f"- {text}", "item")
        else:
            builder.block(text)
    parsed = builder.build()
    parsed.title = (core_title or "").strip() or style_title or parsed.title
    return parsed


# ------------------------------------------------------------------------- the built-in types
# One register_file_type call per type: its names, how its content is recognised, its parser
# (ragserve.ingest.filetypes; a new type needs nothing else).

FileType.TEXT = register_file_type(
    FileType("text", "text/plain", (".txt", ".text"), parse=_parse_text)
)
FileType.MARKDOWN = register_file_type(
    FileType(
        "markdown",
        "text/markdown",
        (".md", ".markdown"),
        parse=_parse_markdown,
        aliases=("text/x-markdown",),
    )
)
FileType.HTML = register_file_type(
    FileType(
        "html",
        "text/html",
        (".html", ".htm", ".xhtml"),
        parse=_parse_html,
        aliases=("application/xhtml+xml",),
        openings=(b"<!doctype html", b"<html"),
    )
)
FileType.PDF = register_file_type(
    FileType(
        "pdf",
        "application/pdf",
        (".pdf",),
        parse=_parse_pdf,
        signature=Signature(
            (b"%PDF-",), "a PDF", "not a PDF: the file does not start with a %PDF- header"
        ),
    )
)
FileType.DOCX = register_file_type(
    FileType(
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        (".docx",),
        parse=_parse_docx,
        signature=Signature(
            (b"PK\x03\x04",), "a ZIP/DOCX archive", "not a DOCX: the file is not a ZIP archive"
        ),
    )
)
# Records: many documents per file, read record by record by ragserve.ingest.sources.
FileType.JSON = register_file_type(FileType("json", "application/json", (".json",)))
FileType.JSONL = register_file_type(
    FileType(
        "jsonl",
        "application/x-ndjson",
        (".jsonl", ".ndjson"),
        aliases=("application/jsonl", "application/json-lines", "application/jsonlines"),
    )
)
