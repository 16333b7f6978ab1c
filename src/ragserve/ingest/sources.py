"""Sources: where documents come from, streamed one at a time, failures as values.

Every source is an iterator of :data:`Item` (a :class:`~ragserve.types.Document` or an
:class:`IngestFailure`): one bad file or record never stops the batch. Memory stays bounded by the
size limit (``max_bytes``, ``Settings.max_document_bytes``) of one document:

* JSONL (files, uploads, standard input) is read line by line; a line over the limit is skipped
  without being held in memory, and reported.
* A JSON file holding an array of records is streamed with ``ijson`` (one record in memory at a
  time, so a 1 GB array of small records is fine); a syntax error ends that file with one failure
  after the records read so far. A JSON file holding one object is one document and must fit the
  limit.
* Other files are checked against the limit before they are read.

A directory is walked in sorted order (deterministic), not following symlinked directories; paths
relative to the root are matched against ``include`` / ``exclude`` glob patterns (``**`` crosses
directories, ``*`` does not). Hidden files and directories are excluded by default. A file's
document id is its path relative to the root (``ids="relative"``, the default: stable when the tree
moves) or its absolute path (``ids="absolute"``), after ``id_prefix``. Records carry their own ids;
a record without one gets ``<file id>#<line>`` (JSONL) or ``<file id>#<index>`` (JSON array).
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Literal

import ijson  # type: ignore[import-untyped]

from ragserve.errors import RagserveError
from ragserve.ingest.detect import SNIFF_BYTES
from ragserve.ingest.filetypes import default_include
from ragserve.ingest.limits import Limits
from ragserve.ingest.parsers import (
    FileType,
    ParseError,
    check_size,
    detect_type,
    parse_bytes,
    record_to_document,
)
from ragserve.types import Document

__all__ = [
    "DEFAULT_EXCLUDE",
    "IngestFailure",
    "Item",
    "default_include",
    "iter_bytes",
    "iter_directory",
    "iter_file",
    "iter_path",
    "iter_records",
    "iter_stream",
    "iter_walked",
    "selected",
    "stdin_source",
    "walk_files",
]

IdScheme = Literal["relative", "absolute"]
StreamFormat = Literal["auto", "jsonl", "json", "text"]


@dataclass(frozen=True, slots=True)
class IngestFailure:
    """One document or record that could not be ingested, and why (a message for the user)."""

    source: str
    error: str
    error_type: str = "parse_error"

    @classmethod
    def of(cls, source: str, exc: RagserveError) -> IngestFailure:
        return cls(source=source, error=exc.message, error_type=exc.error_type)


Item = Document | IngestFailure

DEFAULT_EXCLUDE: tuple[str, ...] = ("**/.*", "**/.*/**")


# -------------------------------------------------------------------------------- records


def iter_records(
    records: Iterable[object], *, max_bytes: int, source: str = "records"
) -> Iterator[Item]:
    """Documents from JSON-like records (``id``, ``text``, optional ``title``, ``metadata``)."""
    for index, record in enumerate(records):
        where = f"{source}[{index}]"
        try:
            yield record_to_document(record, fallback_id=None, max_bytes=max_bytes)
        except RagserveError as exc:
            yield IngestFailure.of(where, exc)


def _bounded_lines(stream: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) for each line; ``None`` for a line over ``max_bytes`` (skipped)."""
    number = 0
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while True:  # drain the rest of the long line without keeping it
                rest = stream.readline(1 << 16)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, None
        else:
            yield number, line


def _jsonl(stream: BinaryIO, source: str, max_bytes: int) -> Iterator[Item]:
    for number, line in _bounded_lines(stream, max_bytes):
        where = f"{source}:{number}"
        if line is None:
            yield IngestFailure(
                where,
                f"line {number} is over the limit of {max_bytes:,} bytes (max_document_bytes)",
                "payload_too_large",
            )
            continue
        if not line.strip():
            continue
        try:
            try:
                text = line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise ParseError(f"invalid UTF-8 at byte {exc.start} of line {number}") from None
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ParseError(
                    f"invalid JSON on line {number}, column {exc.colno}: {exc.msg}"
                ) from None
            yield record_to_document(record, fallback_id=f"{source}#{number}", max_bytes=max_bytes)
        except RagserveError as exc:
            yield IngestFailure.of(where, exc)


def _json(stream: BinaryIO, source: str, max_bytes: int, doc_id: str | None) -> Iterator[Item]:
    """A JSON document: an array of records (streamed) or one record object."""
    head = _Rewound(stream)
    first = head.first_byte()
    if first == b"[":
        count = 0
        try:
            for count, record in enumerate(ijson.items(head, "item", use_float=True), start=1):
                try:
                    yield record_to_document(
                        record, fallback_id=f"{source}#{count - 1}", max_bytes=max_bytes
                    )
                except RagserveError as exc:
                    yield IngestFailure.of(f"{source}[{count - 1}]", exc)
        except ijson.JSONError as exc:
            yield IngestFailure(
                source, f"invalid JSON after {count} record(s); the rest is skipped: {exc}"
            )
        return
    data = head.read(max_bytes + 1)
    try:
        check_size(len(data), max_bytes, "the JSON document")
        yield parse_bytes(data, "record.json", max_bytes=max_bytes, doc_id=doc_id, source=source)
    except RagserveError as exc:
        yield IngestFailure.of(source, exc)


class _Rewound(io.RawIOBase):
    """A binary stream whose first bytes were looked at and are read again."""

    def __init__(self, stream: BinaryIO, head: bytes = b"") -> None:
        super().__init__()
        self._stream = stream
        self._head = head

    def first_byte(self) -> bytes:
        """The first byte that is not whitespace or a BOM (kept for reading)."""
        while True:
            chunk = self._stream.read(4096)
            self._head += chunk
            stripped = self._head.lstrip(b"\xef\xbb\xbf \t\r\n")
            if stripped or not chunk:
                return stripped[:1]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        out = bytearray()
        while self._head and (limit < 0 or len(out) < limit):
            cut = self._head.find(b"\n")
            take = len(self._head) if cut < 0 else cut + 1
            if limit >= 0:
                take = min(take, limit - len(out))
            out += self._head[:take]
            self._head = self._head[take:]
            if out.endswith(b"\n"):
                return bytes(out)
        if limit < 0 or len(out) < limit:
            out += self._stream.readline(-1 if limit < 0 else limit - len(out))
        return bytes(out)


# ---------------------------------------------------------------------------------- files


def iter_bytes(
    data: bytes,
    filename: str,
    content_type: str | None = None,
    *,
    max_bytes: int,
    doc_id: str | None = None,
    limits: Limits | None = None,
) -> Iterator[Item]:
    """An upload: one document, or its records for JSON / JSONL (each checked against the limit).

    The whole upload is already in memory here (the HTTP layer bounds it with its body limit);
    the server parses it in a separate process (:mod:`ragserve.ingest.worker`).
    """
    try:
        kind = detect_type(data[:SNIFF_BYTES], filename, content_type)
    except RagserveError as exc:
        yield IngestFailure.of(filename, exc)
        return
    if kind is FileType.JSONL:
        yield from _jsonl(io.BytesIO(data), filename, max_bytes)
    elif kind is FileType.JSON:
        yield from _json(io.BytesIO(data), filename, max_bytes, doc_id)
    else:
        try:
            yield parse_bytes(
                data, filename, content_type, max_bytes=max_bytes, doc_id=doc_id, limits=limits
            )
        except RagserveError as exc:
            yield IngestFailure.of(filename, exc)


def iter_file(
    path: Path,
    *,
    max_bytes: int,
    doc_id: str | None = None,
    source: str | None = None,
    limits: Limits | None = None,
) -> Iterator[Item]:
    """One file: one document, or its records for JSON / JSONL (streamed)."""
    source = source or path.as_posix()
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
            kind = detect_type(head, path.name)
            if kind.is_records:
                fh.seek(0)
                if kind is FileType.JSONL:
                    yield from _jsonl(fh, source, max_bytes)
                else:
                    yield from _json(fh, source, max_bytes, doc_id)
                return
            size = os.fstat(fh.fileno()).st_size
            check_size(size, max_bytes, "the file")
            fh.seek(0)
            data = fh.read(max_bytes + 1)
        check_size(len(data), max_bytes, "the file")
        yield parse_bytes(
            data,
            path.name,
            max_bytes=max_bytes,
            doc_id=doc_id or source,
            source=source,
            limits=limits,
        )
    except OSError as exc:
        yield IngestFailure(source, f"cannot read the file: {exc.strerror or exc}", "parse_error")
    except RagserveError as exc:
        yield IngestFailure.of(source, exc)


def iter_stream(
    stream: BinaryIO,
    *,
    max_bytes: int,
    fmt: StreamFormat = "auto",
    source: str = "<stdin>",
    doc_id: str | None = None,
    limits: Limits | None = None,
) -> Iterator[Item]:
    """Standard input (or any binary stream): JSONL records, a JSON document, or one text.

    ``auto`` reads JSONL when the first non-blank byte is ``{``, a JSON array when it is ``[``,
    else one document whose type is sniffed (text, Markdown is read as text, HTML, PDF).
    """
    rewound = _Rewound(stream)
    if fmt == "auto":
        first = rewound.first_byte()
        fmt = "jsonl" if first == b"{" else "json" if first == b"[" else "text"
    if fmt == "jsonl":
        yield from _jsonl(rewound, source, max_bytes)  # type: ignore[arg-type]
        return
    if fmt == "json":
        yield from _json(rewound, source, max_bytes, doc_id)  # type: ignore[arg-type]
        return
    data = rewound.read(max_bytes + 1)
    try:
        check_size(len(data), max_bytes, "the input")
        yield parse_bytes(
            data,
            "stdin",
            max_bytes=max_bytes,
            doc_id=doc_id or source,
            source=source,
            limits=limits,
        )
    except RagserveError as exc:
        yield IngestFailure.of(source, exc)


def stdin_source(
    *, max_bytes: int, fmt: StreamFormat = "auto", limits: Limits | None = None
) -> Iterator[Item]:
    """:func:`iter_stream` over the process's standard input."""
    return iter_stream(sys.stdin.buffer, max_bytes=max_bytes, fmt=fmt, limits=limits)


# ---------------------------------------------------------------------------- directories


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over POSIX relative paths: ``**`` any directories, ``*`` / ``?`` within one name."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            close = pattern.find("]", i + 2)
            if close < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : close]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    return any(glob_regex(p).match(rel) for p in patterns)


def selected(
    rel: str, include: Sequence[str] | None = None, exclude: Sequence[str] = DEFAULT_EXCLUDE
) -> bool:
    """Whether :func:`walk_files` takes the file at relative POSIX path ``rel`` (``include``
    default: every registered file type's patterns, :func:`default_include`)."""
    include = default_include() if include is None else include
    parts = rel.split("/")
    for i in range(1, len(parts)):  # a file under an excluded directory is not walked into
        if _matches("/".join(parts[:i]) + "/", exclude):
            return False
    return _matches(rel, include) and not _matches(rel, exclude)


def walk_files(
    root: Path,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
) -> Iterator[tuple[Path, str]]:
    """(path, relative POSIX path) of every matching file under ``root``, in sorted order
    (``include`` default: every registered file type's patterns, :func:`default_include`)."""
    include = default_include() if include is None else include
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        rel_dir = base.relative_to(root).as_posix()
        # Prune excluded directories early (a pattern like "**/.*/**" excludes their contents).
        dirnames[:] = [d for d in dirnames if not _matches(_join(rel_dir, d) + "/", exclude)]
        for name in sorted(filenames):
            rel = _join(rel_dir, name)
            if _matches(rel, include) and not _matches(rel, exclude):
                yield base / name, rel


def _join(rel_dir: str, name: str) -> str:
    return name if rel_dir in ("", ".") else f"{rel_dir}/{name}"


def iter_directory(
    root: Path,
    *,
    max_bytes: int,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    ids: IdScheme = "relative",
    id_prefix: str = "",
    limits: Limits | None = None,
) -> Iterator[Item]:
    """Every matching file under ``root``, in sorted order (see the module docstring)."""
    if not root.is_dir():
        yield IngestFailure(root.as_posix(), "not a directory", "not_found")
        return
    walked = walk_files(root, include=include, exclude=exclude)
    yield from iter_walked(walked, max_bytes=max_bytes, ids=ids, id_prefix=id_prefix, limits=limits)


def iter_walked(
    files: Iterable[tuple[Path, str]],
    *,
    max_bytes: int,
    ids: IdScheme = "relative",
    id_prefix: str = "",
    limits: Limits | None = None,
) -> Iterator[Item]:
    """The files of a walk (:func:`walk_files`' pairs, e.g. listed once to count them), read as
    :func:`iter_directory` reads them."""
    for path, rel in files:
        source = rel if ids == "relative" else path.resolve().as_posix()
        yield from iter_file(
            path, max_bytes=max_bytes, doc_id=id_prefix + source, source=source, limits=limits
        )


def iter_path(
    path: Path,
    *,
    max_bytes: int,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    ids: IdScheme = "relative",
    id_prefix: str = "",
    limits: Limits | None = None,
) -> Iterator[Item]:
    """A directory (walked) or one file (id: its name for ``relative``, else its absolute path).

    ``limits`` bound what parsing one file may expand to (default: :class:`Limits`' defaults)."""
    if path.is_dir():
        yield from iter_directory(
            path, max_bytes=max_bytes, include=include, exclude=exclude, ids=ids,
            id_prefix=id_prefix, limits=limits,
        )  # fmt: skip
        return
    yield from iter_walked(
        [(path, path.name)], max_bytes=max_bytes, ids=ids, id_prefix=id_prefix, limits=limits
    )
