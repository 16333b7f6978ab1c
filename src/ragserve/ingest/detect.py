"""File type detection, size limit and strict text decoding: where a document is refused first.

The type comes from the file extension, else the HTTP content type, else the content; the content
must agree with the name (a ``.txt`` holding binary bytes, a ``.pdf`` without a PDF header are
refused).
"""

from __future__ import annotations

from pathlib import PurePath

from ragserve.errors import InvalidInput, PayloadTooLarge
from ragserve.ingest import filetypes
from ragserve.ingest.filetypes import FileType

__all__ = [
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


SNIFF_BYTES = 8192


# ------------------------------------------------------------------------------------- detection


def check_size(size: int, max_bytes: int, what: str) -> None:
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{what} is {size:,} bytes, over the limit of {max_bytes:,} (max_document_bytes)"
        )


def _sniff(head: bytes) -> FileType | None:
    """The type the first bytes prove, or None for text of no particular kind."""
    types = filetypes.file_types()
    for kind in types:
        if kind.signature is not None and head.startswith(kind.signature.prefixes):
            return kind  # a ZIP is confirmed (or refused) as DOCX when the archive is opened
    if _looks_binary(head):
        raise ParseError("binary content (not text): refused")
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    opened = (kind for kind in types if kind.openings and stripped.startswith(kind.openings))
    return next(opened, None)


def _looks_binary(head: bytes) -> bool:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a BOM is text
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if (b < 32 and b not in (9, 10, 12, 13, 27)) or b == 127)
    return bool(head) and controls / len(head) > 0.1


def detect_type(head: bytes, filename: str, content_type: str | None = None) -> FileType:
    """The file's type from its name, else the declared content type, else its first bytes
    (:mod:`ragserve.ingest.filetypes` holds the types)."""
    suffix = PurePath(filename).suffix.lower()
    claimed = filetypes.for_extension(suffix)
    if claimed is None and content_type:
        claimed = filetypes.for_content_type(content_type)
    if claimed is None and suffix:
        supported = ", ".join(filetypes.extensions())
        raise UnsupportedType(f"unsupported file type {suffix!r} (supported: {supported})")
    sniffed = _sniff(head)
    if claimed is None:
        return sniffed or FileType.TEXT
    if sniffed is not None and sniffed.signature is not None and sniffed is not claimed:
        content = sniffed.signature.content
        raise ParseError(f"named as {claimed.name} but the content is {content}: refused")
    if claimed.signature is not None and sniffed is not claimed:
        raise ParseError(claimed.signature.missing)
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
