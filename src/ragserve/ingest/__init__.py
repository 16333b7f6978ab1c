"""Ingestion, the library part: parse files and records, stream sources, cut token-aware chunks.

The service layer iterates a source (:mod:`ragserve.ingest.sources`), keeps each
:class:`~ragserve.types.Document`, reports each :class:`IngestFailure`, skips documents whose
:func:`content_hash` is already stored, and embeds :func:`embedding_text` of every chunk from
:func:`chunk_document`. See ``docs/ingest.md``.
"""

from ragserve.ingest.chunking import (
    chunk_document,
    content_budget,
    content_hash,
    embedding_text,
    heading_prefix,
)
from ragserve.ingest.parsers import FileType, ParseError, UnsupportedType, parse_bytes, parse_file
from ragserve.ingest.sources import (
    IngestFailure,
    Item,
    iter_bytes,
    iter_directory,
    iter_file,
    iter_path,
    iter_records,
    iter_stream,
)

__all__ = [
    "FileType",
    "IngestFailure",
    "Item",
    "ParseError",
    "UnsupportedType",
    "chunk_document",
    "content_budget",
    "content_hash",
    "embedding_text",
    "heading_prefix",
    "iter_bytes",
    "iter_directory",
    "iter_file",
    "iter_path",
    "iter_records",
    "iter_stream",
    "parse_bytes",
    "parse_file",
]
