"""The file types ingest reads: one registry, where a type is added in one place.

A :class:`FileType` says everything ingest needs to know about one kind of file: its names
(extensions, the default include pattern a folder walk takes it with, declared content types), how
its content is recognised (the leading bytes of a binary format, the opening of a text one), and
its parser. ``register_file_type(FileType(...))`` adds one; :mod:`ragserve.ingest.detect`,
:mod:`ragserve.ingest.parsers` and :mod:`ragserve.ingest.sources` read only this registry. The
built-in types are registered beside their parsers, in :mod:`ragserve.ingest.parsers`.

Records (JSON, JSONL) are the exception: one file holds many documents, streamed by
:mod:`ragserve.ingest.sources`; they are registered here for their names, without a parser.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ragserve.errors import InvalidInput
from ragserve.types import JSONDict, Section

if TYPE_CHECKING:
    from ragserve.ingest.limits import Limits

__all__ = [
    "FileType",
    "Parsed",
    "Parser",
    "Signature",
    "default_include",
    "extensions",
    "file_types",
    "for_content_type",
    "for_extension",
    "register_file_type",
    "registered",
    "unregister_file_type",
]


@dataclass
class Parsed:
    """What a parser makes of one file: its text, optional title, sections that cover the text
    in order, and metadata added to the document's (``source``, ``filename`` and
    ``content_type`` are set by the caller)."""

    text: str
    title: str | None = None
    sections: list[Section] = field(default_factory=list)
    metadata: JSONDict = field(default_factory=dict)


#: A parser: the file's bytes and the per-document budgets -> :class:`Parsed`. Every problem with
#: the file raises :class:`~ragserve.ingest.detect.ParseError` (or a subclass) with a message for
#: the user.
Parser = Callable[[bytes, "Limits"], Parsed]


@dataclass(frozen=True)
class Signature:
    """The leading bytes that prove a binary format, and how a mismatch is told to the user."""

    prefixes: tuple[bytes, ...]
    #: What content starting with these bytes is ("a PDF"), for a file named as another type.
    content: str
    #: Why a file named as this type without them is refused.
    missing: str


@dataclass(frozen=True, eq=False)
class FileType:
    """One kind of file ingest reads (compared by identity: one object per registered type)."""

    #: Short lower-case name, unique ("pdf"); used in messages.
    name: str
    #: The canonical content type, stored in each document's ``metadata.content_type``.
    content_type: str
    #: File name extensions, lower-case with the dot (".pdf"); the first wins nothing, all count.
    extensions: tuple[str, ...]
    #: The parser; ``None`` for record files (JSON, JSONL), which sources read record by record.
    parse: Parser | None = None
    #: Other declared content types that mean this type (``text/x-markdown``).
    aliases: tuple[str, ...] = ()
    #: A binary format: the leading bytes that prove it; a file so named must start with them.
    signature: Signature | None = None
    #: A text format recognised from an unnamed upload's opening (whitespace and a BOM skipped,
    #: compared case-insensitively), e.g. ``b"<!doctype html"``.
    openings: tuple[bytes, ...] = ()
    #: Glob patterns a folder walk takes by default; default: ``**/*EXT`` for each extension.
    include: tuple[str, ...] = ()

    # The built-in types, set when they are registered (ragserve.ingest.parsers).
    TEXT: ClassVar[FileType]
    MARKDOWN: ClassVar[FileType]
    HTML: ClassVar[FileType]
    PDF: ClassVar[FileType]
    DOCX: ClassVar[FileType]
    JSON: ClassVar[FileType]
    JSONL: ClassVar[FileType]

    @property
    def is_records(self) -> bool:
        return self.parse is None

    @property
    def is_text(self) -> bool:
        return self.signature is None

    @property
    def patterns(self) -> tuple[str, ...]:
        """The glob patterns a folder walk takes this type with by default."""
        return self.include or tuple(f"**/*{ext}" for ext in self.extensions)

    def __repr__(self) -> str:
        return f"FileType({self.name!r})"


_lock = threading.Lock()
_types: dict[str, FileType] = {}  # by name, in registration order


def register_file_type(file_type: FileType) -> FileType:
    """Add a file type; its name, extensions and content types must be new. Returns it."""
    with _lock:
        if file_type.name in _types:
            raise InvalidInput(f"file type {file_type.name!r} is already registered")
        for other in _types.values():
            taken = set(other.extensions) & set(file_type.extensions)
            taken |= set(_content_types(other)) & set(_content_types(file_type))
            if taken:
                raise InvalidInput(
                    f"file type {file_type.name!r}: {', '.join(sorted(taken))} already "
                    f"belong(s) to {other.name!r}"
                )
        if any(ext != ext.lower() or not ext.startswith(".") for ext in file_type.extensions):
            raise InvalidInput(f"file type {file_type.name!r}: extensions are lower-case '.ext'")
        _types[file_type.name] = file_type
    return file_type


def unregister_file_type(name: str) -> None:
    """Remove a registered type (plugins and tests that registered one)."""
    with _lock:
        _types.pop(name, None)


@contextmanager
def registered(file_type: FileType) -> Iterator[FileType]:
    """``file_type`` registered for the duration of a ``with`` block."""
    register_file_type(file_type)
    try:
        yield file_type
    finally:
        unregister_file_type(file_type.name)


def _content_types(file_type: FileType) -> tuple[str, ...]:
    return (file_type.content_type, *file_type.aliases)


def file_types() -> tuple[FileType, ...]:
    """Every registered type, in registration order."""
    return tuple(_types.values())


def for_extension(suffix: str) -> FileType | None:
    """The type a file name's extension (lower-case, with the dot) names, if any."""
    return next((t for t in _types.values() if suffix in t.extensions), None)


def for_content_type(content_type: str) -> FileType | None:
    """The type a declared content type (``text/html; charset=utf-8``) names, if any."""
    bare = content_type.split(";")[0].strip().lower()
    return next((t for t in _types.values() if bare in _content_types(t)), None)


def extensions() -> list[str]:
    """Every registered extension, sorted (for messages)."""
    return sorted(ext for t in _types.values() for ext in t.extensions)


def default_include() -> tuple[str, ...]:
    """The glob patterns a folder walk takes by default: every registered type's."""
    return tuple(p for t in _types.values() for p in t.patterns)
