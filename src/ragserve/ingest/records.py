"""JSON records (``id``, ``text``, optional ``title`` and ``metadata``) -> documents."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ragserve.ingest.detect import FileType, ParseError, check_size, decode_text
from ragserve.types import Document

__all__ = ["RECORD_FIELDS", "check_record", "record_to_document", "single_record"]


RECORD_FIELDS = ("id", "text", "title", "metadata")


def record_to_document(record: object, *, fallback_id: str | None, max_bytes: int) -> Document:
    """Validate one JSON record (``id``, ``text``, optional ``title``, ``metadata``).

    ``id`` may be a string or an integer; without one, ``fallback_id`` is used (sources pass
    ``<source>#<line>``) or the record is refused. Unknown fields are refused, not dropped.
    """
    if not isinstance(record, Mapping):
        raise ParseError(f"a record must be a JSON object, got {_json_type(record)}")
    unknown = sorted(set(record) - set(RECORD_FIELDS))
    if unknown:
        raise ParseError(
            f"unknown field(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(RECORD_FIELDS)})"
        )
    raw_id = record.get("id")
    if raw_id is None:
        if fallback_id is None:
            raise ParseError("record has no 'id'")
        doc_id = fallback_id
    elif isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise ParseError(f"'id' must be a string or an integer, got {_json_type(raw_id)}")
    else:
        doc_id = str(raw_id)
        if not doc_id.strip():
            raise ParseError("'id' is empty")
    text = record.get("text")
    if text is None:
        raise ParseError(f"record {doc_id!r} has no 'text'")
    if not isinstance(text, str):
        raise ParseError(f"record {doc_id!r}: 'text' must be a string, got {_json_type(text)}")
    _check_unicode(text, f"record {doc_id!r}: 'text'")
    check_size(len(text.encode("utf-8")), max_bytes, f"record {doc_id!r}")
    if not text.strip():
        raise ParseError(f"record {doc_id!r}: 'text' is empty")
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        raise ParseError(f"record {doc_id!r}: 'title' must be a string, got {_json_type(title)}")
    metadata = record.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise ParseError(
            f"record {doc_id!r}: 'metadata' must be an object, got {_json_type(metadata)}"
        )
    check_record(doc_id, text, title, metadata, max_bytes)
    return Document(
        id=doc_id,
        text=text.replace("\r\n", "\n"),
        title=title.strip() or None if title else None,
        metadata=dict(metadata),
    )


def check_record(
    doc_id: str, text: str, title: str | None, metadata: Mapping[str, Any], max_bytes: int
) -> None:
    """Valid Unicode throughout (no lone surrogates), metadata that is JSON data, and at most
    ``max_bytes`` of UTF-8 in text, title and metadata together (``max_document_bytes``: "the
    largest file or record")."""
    where = f"record {doc_id!r}"
    _check_unicode(text, f"{where}: 'text'")
    if title:
        _check_unicode(title, f"{where}: 'title'")
    try:
        encoded = json.dumps(metadata, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ParseError(f"{where}: 'metadata' is not valid Unicode ({exc.reason})") from None
    except (TypeError, ValueError) as exc:
        raise ParseError(f"{where}: 'metadata' is not JSON data ({exc})") from None
    size = len(text.encode("utf-8")) + len((title or "").encode("utf-8"))
    size += len(encoded) if metadata else 0
    check_size(size, max_bytes, where)


def _check_unicode(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ParseError(f"{what} is not valid Unicode (lone surrogate at {exc.start})") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def single_record(data: bytes, kind: FileType, doc_id: str, max_bytes: int) -> Document:
    text = decode_text(data)
    if kind is FileType.JSONL:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) != 1:
            raise ParseError(f"this JSONL holds {len(lines)} records: read it with iter_bytes")
        text = lines[0]
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if isinstance(record, list):
        raise ParseError(f"this JSON array holds {len(record)} records: read it with iter_bytes")
    return record_to_document(record, fallback_id=doc_id, max_bytes=max_bytes)
