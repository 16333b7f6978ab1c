"""Hostile files for ingestion, built small on disk (each expands when parsed).

Used by ``tests/test_hostile_ingest_e2e.py`` and ``bench/hostile_bench.py``:

* :func:`docx_run_bomb`: a ~200 KB DOCX whose ``word/document.xml`` is ~63 MB of one-character
  runs (under the 64 MB the old declared-size check allowed);
* :func:`html_empty_divs`: an HTML page of millions of empty ``<div></div>``;
* :func:`pdf_many_pages`: a PDF of 90,000 pages in a few KB (a page tree whose nodes are
  shared: 300 kids of 300 kids of one page, every page drawing the same line, no text);
* :func:`lying_zip_docx`: a DOCX whose ``word/document.xml`` declares 1,000 bytes and holds
  2.5 GB (a repeated, byte-aligned deflate block);
* :func:`jsonl_long_line`: one JSONL record of a 20 MB text;
* :func:`long_title_record`: a JSON document whose title is 10 MB.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

_W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
    'package/2006/content-types"><Default Extension="rels" ContentType="application/'
    'vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType='
    '"application/xml"/><Override PartName="/word/document.xml" ContentType="application/'
    'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.'
    'org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxml'
    'formats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/>'
    "</Relationships>"
)


def docx_run_bomb(
    path: Path, *, xml_bytes: int = 63_000_000, runs_per_paragraph: int = 3000
) -> Path:
    """A DOCX of one real paragraph then paragraphs of ``runs_per_paragraph`` one-letter runs,
    up to about ``xml_bytes`` of XML (each paragraph's text is one long "word")."""
    run = "<w:r><w:rPr><w:b/></w:rPr><w:t>x</w:t></w:r>"
    paragraph = ("<w:p>" + run * runs_per_paragraph + "</w:p>").encode()
    head = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document xmlns:w="{_W_NS}">'
        "<w:body><w:p><w:r><w:t>A report hidden in a run bomb.</w:t></w:r></w:p>"
    ).encode()
    tail = b"</w:body></w:document>"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("[Content_Types].xml", _CONTENT_TYPES)
        zf.writestr("_rels/.rels", _RELS)
        with zf.open("word/document.xml", "w", force_zip64=True) as out:
            out.write(head)
            written = len(head)
            while written + len(paragraph) + len(tail) <= xml_bytes:
                out.write(paragraph)
                written += len(paragraph)
            out.write(tail)
    return path


def html_empty_divs(path: Path, *, size: int = 48_000_000) -> Path:
    head = b"<!DOCTYPE html><html><head><title>Divs</title></head><body><p>Some text.</p>"
    tail = b"</body></html>"
    div = b"<div></div>"
    with path.open("wb") as fh:
        fh.write(head)
        fh.write(div * ((size - len(head) - len(tail)) // len(div)))
        fh.write(tail)
    return path


def pdf_many_pages(path: Path, *, fanout: int = 300, levels: int = 2) -> Path:
    """``fanout ** levels`` pages (90,000 by default: pypdf refuses page trees of more than
    100,000 entries by itself) in a few KB of objects."""
    objects: dict[int, bytes] = {}
    content = b"0 0 m 100 100 l S"
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[3] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content)
    # Object 4 is a page; 5.. are /Pages nodes, each with `fanout` references to the next one.
    first_node = 5
    node_ids = [2] + [first_node + i for i in range(levels - 1)]
    for level, node in enumerate(node_ids):
        kid = node_ids[level + 1] if level + 1 < len(node_ids) else 4
        parent = b"" if level == 0 else b" /Parent %d 0 R" % node_ids[level - 1]
        count = fanout ** (levels - level)
        kids = b" ".join(b"%d 0 R" % kid for _ in range(fanout))
        objects[node] = b"<< /Type /Pages /Kids [%s] /Count %d%s >>" % (kids, count, parent)
    objects[4] = (
        b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 200 200] /Contents 3 0 R "
        b"/Resources << >> >>" % node_ids[-1]
    )
    out = bytearray(b"%PDF-1.4\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    path.write_bytes(bytes(out))
    return path


def lying_zip_docx(path: Path, *, holds: int = 2_500_000_000, declares: int = 1000) -> Path:
    """A DOCX whose document.xml declares ``declares`` bytes and inflates to ``holds``."""
    block = b"a" * (1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    comp.compress(block)
    comp.flush(zlib.Z_FULL_FLUSH)
    piece = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, no history
    head = f'<w:document xmlns:w="{_W_NS}"><w:body><w:p><w:r><w:t>'.encode()
    first = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = first.compress(head) + first.flush(zlib.Z_FULL_FLUSH)
    stream += piece * (holds // len(block)) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    name = b"word/document.xml"
    crc = zlib.crc32(head[:declares].ljust(declares, b"a"))
    entries = [
        ("[Content_Types].xml", _CONTENT_TYPES.encode()),
        ("_rels/.rels", _RELS.encode()),
    ]
    out = bytearray()
    central = bytearray()

    def add(filename: bytes, data: bytes, method: int, crc32: int, size: int) -> None:
        offset = len(out)
        header = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc32, len(data), size,
            len(filename), 0,
        )  # fmt: skip
        out.extend(header + filename + data)
        central.extend(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                method,
                0,
                0x21,
                crc32,
                len(data),
                size,
                len(filename),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + filename
        )

    for filename, data in entries:
        add(filename.encode(), data, 0, zlib.crc32(data), len(data))
    add(name, stream, 8, crc, declares)
    start = len(out)
    out.extend(central)
    out.extend(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 3, 3, len(central), start, 0))
    path.write_bytes(bytes(out))
    return path


def jsonl_long_line(path: Path, *, chars: int = 20_000_000) -> Path:
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit "
    text = (words * (chars // len(words) + 1))[:chars]
    path.write_text('{"id": "long-line", "text": "' + text + '"}\n', encoding="utf-8")
    return path


def long_title_record(*, chars: int = 10_000_000) -> dict[str, str]:
    title = ("A very long title " * (chars // 18 + 1))[:chars]
    return {"id": "long-title", "title": title, "text": "A short text under a huge title."}
