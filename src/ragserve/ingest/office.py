"""DOCX text, streamed: the ZIP parts are decompressed in bounded pieces against a budget and
``word/document.xml`` is read with ``lxml.etree.iterparse``, each element freed once handled.

python-docx builds the whole XML tree and a Python object per run: a 190 KB DOCX holding 60 MB
of tiny runs cost it 3 GB and four minutes. Here memory stays near the size of one paragraph's
text and the XML is never held whole. What comes out matches what the python-docx parser gave:
body paragraphs and tables in order (a paragraph's runs and hyperlinks; tabs, breaks and
non-breaking hyphens as text), heading levels from ``Heading N`` styles, ``Title`` style, list
styles as ``- `` items, table rows as ``a | b`` (a merged cell repeated per grid column it spans,
as python-docx's ``row.cells`` does), and the title from the core properties.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from lxml import etree  # type: ignore[import-untyped]

from ragserve.ingest.detect import ParseError
from ragserve.ingest.limits import Budget, BudgetExceeded, CountingReader

__all__ = ["DocxBlock", "read_docx"]

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_DC_TITLE = "{http://purl.org/dc/elements/1.1/}title"
_MAIN = "word/document.xml"
_RUN = f"{_W}r"
#: Parts read whole (styles, core properties) may be at most this large.
_SMALL_PART = 16 * 1024 * 1024

_TEXT_TAGS = {f"{_W}t": None, f"{_W}tab": "\t", f"{_W}ptab": "\t", f"{_W}br": "\n",
              f"{_W}cr": "\n", f"{_W}noBreakHyphen": "-"}  # fmt: skip
_EVENT_TAGS = (
    *_TEXT_TAGS,
    f"{_W}p", f"{_W}pStyle", f"{_W}tbl", f"{_W}tr", f"{_W}tc", f"{_W}gridSpan",
    f"{_W}vMerge", f"{_W}body",
)  # fmt: skip
_HEADING_ID = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


@dataclass
class DocxBlock:
    """A body paragraph (``style``: its style name) or a table (``rows`` of cell texts)."""

    text: str = ""
    style: str = ""
    rows: list[list[str]] | None = None


@dataclass
class _Cell:
    paragraphs: list[str] = field(default_factory=list)
    span: int = 1
    merge: str | None = None  # vMerge: "restart" or "continue"


@dataclass
class _Table:
    depth: int
    rows: list[list[str]] = field(default_factory=list)
    row: list[_Cell] = field(default_factory=list)
    above: dict[int, str] = field(default_factory=dict)  # grid column -> text (vertical merges)


def read_docx(data: bytes, budget: Budget) -> tuple[list[DocxBlock], str | None]:
    """The body's blocks and the core-properties title; every decompressed byte is spent from
    ``budget`` (declared sizes are checked first and never trusted)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ParseError(f"corrupt DOCX: {exc}") from None
    with zf:
        names = set(zf.namelist())
        if _MAIN not in names:
            raise ParseError("not a DOCX: the ZIP archive has no word/document.xml")
        declared = sum(info.file_size for info in zf.infolist())
        if declared > budget.limit:
            raise BudgetExceeded(
                f"DOCX expands to {declared:,} bytes from {len(data):,}: refused (ZIP bomb?)"
            )
        try:
            styles = _style_names(_small_part(zf, "word/styles.xml", names, budget))
            title = _core_title(_small_part(zf, "docProps/core.xml", names, budget))
            with zf.open(_MAIN) as raw:
                blocks = list(_blocks(CountingReader(raw, budget), styles))  # type: ignore[arg-type]
        except ParseError:
            raise
        except zipfile.BadZipFile as exc:  # a CRC mismatch: the entry holds other than declared
            raise ParseError(
                f"corrupt DOCX: {exc} (an entry holds more than it declares?)"
            ) from None
        except etree.XMLSyntaxError as exc:
            raise ParseError(f"corrupt DOCX: invalid XML in {_MAIN}: {exc}") from None
        # zlib and zipfile raise several types on damaged data; this is where they enter.
        except (OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
            raise ParseError(f"corrupt DOCX: {type(exc).__name__}: {exc}") from None
    return blocks, title


def _small_part(zf: zipfile.ZipFile, name: str, names: set[str], budget: Budget) -> bytes | None:
    if name not in names:
        return None
    part = Budget(min(_SMALL_PART, budget.limit), f"DOCX part {name}")
    with zf.open(name) as raw:
        data = CountingReader(raw, part).read_all()  # type: ignore[arg-type]
    budget.spend(len(data))
    return data


def _parser_kwargs() -> dict[str, bool]:
    return {"resolve_entities": False, "no_network": True, "huge_tree": False}


def _style_names(xml: bytes | None) -> dict[str, str]:
    """styleId -> name ("Heading1" -> "heading 1")."""
    if not xml:
        return {}
    out: dict[str, str] = {}
    parser = etree.XMLParser(**_parser_kwargs())
    try:
        root = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError:
        return {}
    for style in root.iter(f"{_W}style"):
        style_id = style.get(f"{_W}styleId")
        name = style.find(f"{_W}name")
        if style_id and name is not None and name.get(f"{_W}val"):
            out[style_id] = str(name.get(f"{_W}val"))
    return out


def _core_title(xml: bytes | None) -> str | None:
    if not xml:
        return None
    parser = etree.XMLParser(**_parser_kwargs())
    try:
        root = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError:
        return None
    node = root.find(_DC_TITLE)
    return node.text if node is not None and node.text else None


def _free(elem: etree._Element) -> None:
    """Drop a handled element's content and the siblings before it (bounded memory)."""
    elem.clear(keep_tail=False)
    _drop_before(elem)


def _blocks(stream: CountingReader, styles: dict[str, str]) -> Iterator[DocxBlock]:
    paragraphs: list[tuple[list[str], list[str], int]] = []  # (text parts, style, depth)
    cells: list[tuple[_Cell, int]] = []
    tables: list[_Table] = []
    depth = 0  # nesting of p / tbl / tc containers seen from the body
    in_body = False
    texts = 0
    events = etree.iterparse(stream, events=("start", "end"), tag=_EVENT_TAGS, **_parser_kwargs())
    for event, elem in events:
        tag = elem.tag
        if event == "start":
            if tag == f"{_W}body":
                in_body = True
            elif tag == f"{_W}p":
                depth += 1
                paragraphs.append(([], [""], depth))
            elif tag == f"{_W}tbl":
                depth += 1
                tables.append(_Table(depth))
            elif tag == f"{_W}tc":
                depth += 1
                cells.append((_Cell(), depth))
            continue
        if tag in _TEXT_TAGS:
            run = elem.getparent()
            if paragraphs and run is not None and run.tag == _RUN:
                paragraphs[-1][0].append(_run_text(elem, tag))
                texts += 1
                if texts % 256 == 0:  # drop the runs already read (a paragraph may hold millions)
                    _drop_before(run)
            continue
        elif tag == f"{_W}pStyle":
            if paragraphs:
                paragraphs[-1][1][0] = str(elem.get(f"{_W}val") or "")
        elif tag == f"{_W}gridSpan":
            if cells:
                cells[-1][0].span = max(1, min(64, _int(elem.get(f"{_W}val"), 1)))
        elif tag == f"{_W}vMerge":
            if cells:
                cells[-1][0].merge = str(elem.get(f"{_W}val") or "continue")
        elif tag == f"{_W}p":
            parts, style, level = paragraphs.pop()
            depth -= 1
            text = "".join(parts)
            if cells and cells[-1][1] == level - 1:
                cells[-1][0].paragraphs.append(text)
            elif in_body and level == 1:
                yield DocxBlock(text=text, style=styles.get(style[0], style[0]))
        elif tag == f"{_W}tc":
            cell, level = cells.pop()
            depth -= 1
            if tables and tables[-1].depth == level - 1:
                tables[-1].row.append(cell)
        elif tag == f"{_W}tr":
            if tables:
                table = tables[-1]
                table.rows.append(_row_texts(table))
                table.row = []
        elif tag == f"{_W}tbl":
            table = tables.pop()
            depth -= 1
            if in_body and table.depth == 1:
                yield DocxBlock(rows=table.rows)
        if tag != f"{_W}body":
            _free(elem)


def _drop_before(elem: etree._Element) -> None:
    parent = elem.getparent()
    if parent is not None:
        while elem.getprevious() is not None:
            del parent[0]


def _run_text(elem: etree._Element, tag: str) -> str:
    fixed = _TEXT_TAGS[tag]
    if fixed is None:
        return elem.text or ""
    if tag == f"{_W}br" and elem.get(f"{_W}type") not in (None, "textWrapping"):
        return ""  # a page or column break (python-docx gives no text for it either)
    return fixed


def _row_texts(table: _Table) -> list[str]:
    out: list[str] = []
    column = 0
    for cell in table.row:
        text = "\n".join(cell.paragraphs)
        if cell.merge == "continue":
            text = table.above.get(column, text)
        for _ in range(cell.span):
            table.above[column] = text
            out.append(text)
            column += 1
    return out


def _int(value: object, default: int) -> int:
    try:
        return int(str(value))
    except ValueError:
        return default
