"""File type detection, size limit and strict text decoding: where a document is refused first.

The type comes from the file extension, else the HTTP content type, else the content; the content
must agree with the name (a ``.txt`` holding binary bytes, a ``.pdf`` without a PDF header are
refused).
"""

from __future__ import annotations

import enum
from pathlib import PurePath

from ragserve.errors import InvalidInput, PayloadTooLarge

__all__ = [
    "EXTENSIONS",
    "SNIFF_BYTES",
    "FileType",
    "ParseError",
    "UnsupportedType",
    "check_size",
    "decode_text",
    "detect_type",
]


class ParseError(InvalidInput):
    """One document could not be turned into text (corrupt, encrypted, empty, not UTF-8...)."""

    error_type = "parse_error"


class UnsupportedType(ParseError):
    error_type = "unsupported_type"


class FileType(enum.Enum):
    TEXT = "text/plain"
    MARKDOWN = "text/markdown"
    HTML = "text/html"
    PDF = "application/pdf"
    DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    JSON = "application/json"
    JSONL = "application/x-ndjson"

    @property
    def is_records(self) -> bool:
        return self in (FileType.JSON, FileType.JSONL)

    @property
    def is_text(self) -> bool:
        return self not in (FileType.PDF, FileType.DOCX)


EXTENSIONS: dict[str, FileType] = {
    ".txt": FileType.TEXT,
    ".text": FileType.TEXT,
    ".md": FileType.MARKDOWN,
    ".markdown": FileType.MARKDOWN,
    ".html": FileType.HTML,
    ".htm": FileType.HTML,
    ".xhtml": FileType.HTML,
    ".pdf": FileType.PDF,
    ".docx": FileType.DOCX,
    ".json": FileType.JSON,
    ".jsonl": FileType.JSONL,
    ".ndjson": FileType.JSONL,
}

_CONTENT_TYPES: dict[str, FileType] = {
    **{t.value: t for t in FileType},
    "text/x-markdown": FileType.MARKDOWN,
    "application/xhtml+xml": FileType.HTML,
    "application/jsonl": FileType.JSONL,
    "application/json-lines": FileType.JSONL,
    "application/jsonlines": FileType.JSONL,
}

SNIFF_BYTES = 8192


# ------------------------------------------------------------------------------------- detection


def check_size(size: int, max_bytes: int, what: str) -> None:
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{what} is {size:,} bytes, over the limit of {max_bytes:,} (max_document_bytes)"
        )


def _sniff(head: bytes) -> FileType | None:
    """The type the first bytes prove, or None for text of no particular kind."""
    if head.startswith(b"%PDF-"):
        return FileType.PDF
    if head.startswith(b"PK\x03\x04"):
        return FileType.DOCX  # confirmed (or refused) when the zip is opened
    if _looks_binary(head):
        raise ParseError("binary content (not text): refused")
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return FileType.HTML
    return None


def _looks_binary(head: bytes) -> bool:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a BOM is text
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if (b < 32 and b not in (9, 10, 12, 13, 27)) or b == 127)
    return bool(head) and controls / len(head) > 0.1


def detect_type(head: bytes, filename: str, content_type: str | None = None) -> FileType:
    """The file's type from its name, else the declared content type, else its first bytes."""
    suffix = PurePath(filename).suffix.lower()
    claimed = EXTENSIONS.get(suffix)
    if claimed is None and content_type:
        claimed = _CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
    if claimed is None and suffix:
        supported = ", ".join(sorted(EXTENSIONS))
        raise UnsupportedType(f"unsupported file type {suffix!r} (supported: {supported})")
    sniffed = _sniff(head)
    if claimed is None:
        return sniffed or FileType.TEXT
    if sniffed in (FileType.PDF, FileType.DOCX) and sniffed is not claimed:
        kind = "a PDF" if sniffed is FileType.PDF else "a ZIP/DOCX archive"
        raise ParseError(f"named as {claimed.name.lower()} but the content is {kind}: refused")
    if claimed is FileType.PDF and sniffed is not FileType.PDF:
        raise ParseError("not a PDF: the file does not start with a %PDF- header")
    if claimed is FileType.DOCX and sniffed is not FileType.DOCX:
        raise ParseError("not a DOCX: the file is not a ZIP archive")
    return claimed


def decode_text(data: bytes) -> str:
    """Strict UTF-8 (a UTF-8 or UTF-16 BOM is honoured); newlines normalized to ``\\n``."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ParseError(f"invalid UTF-16 at byte {exc.start}") from None
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            offset = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
            line = data.count(b"\n", 0, offset) + 1
            column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
            raise ParseError(
                f"invalid UTF-8 at byte {offset} (line {line}, column {column}): "
                f"byte 0x{data[offset]:02x}"
            ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        raise ParseError("binary content (NUL characters in text): refused")
    return text
