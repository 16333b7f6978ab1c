"""Per-document budgets: what one file may cost to parse, counted as it is read.

A file's size on disk says little about what parsing it costs: a 200 KB DOCX can hold 60 MB of
XML, a ZIP entry can declare 1,000 bytes and hold 2.5 GB, an HTML page of empty tags can cost a
hundred times its size in DOM nodes. Each parser therefore spends from a :class:`Budget` as it
decompresses (bytes actually produced, never the sizes an archive declares), and the text that
comes out is capped before anything tokenizes it. Time and memory are bounded by the process
that parses uploads (:mod:`ragserve.ingest.worker`). Every budget that runs out fails that one
document with a :class:`BudgetExceeded` that names the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from ragserve.ingest.detect import ParseError

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = ["READ_PIECE", "Budget", "BudgetExceeded", "CountingReader", "Limits"]

#: Decompressed bytes read at a time (what one read of a compressed stream can allocate).
READ_PIECE = 64 * 1024


class BudgetExceeded(ParseError):
    """A document needs more than one of its budgets (expanded bytes, text, time, memory)."""

    error_type = "budget_exceeded"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one document may cost. ``Settings`` holds the defaults (``RAGSERVE_*``)."""

    #: Largest file or record (``max_document_bytes``).
    max_bytes: int = 50 * 1024 * 1024
    #: Decompressed bytes a container (DOCX, any ZIP part) may produce, counted as read.
    max_expanded: int = 64 * 1024 * 1024
    #: Characters of text one document may hold after parsing (``max_document_chars``).
    max_chars: int = 5_000_000
    #: Markup elements (tags) an HTML page may hold; above it the page is refused unparsed.
    max_html_tags: int = 500_000
    #: Seconds a parser process may spend on one document (``parse_timeout``).
    timeout: float = 60.0
    #: Address space of a parser process, bytes (``parse_memory_bytes``; 0: unlimited).
    memory: int = 768 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_bytes=settings.max_document_bytes,
            max_expanded=settings.max_expanded_bytes,
            max_chars=settings.max_document_chars,
            timeout=settings.parse_timeout,
            memory=settings.parse_memory_bytes,
        )


class Budget:
    """Decompressed bytes spent by one document, against ``limit``."""

    def __init__(self, limit: int, what: str = "the document") -> None:
        self.limit = limit
        self.spent = 0
        self.what = what

    def spend(self, n: int) -> None:
        self.spent += n
        if self.spent > self.limit:
            raise BudgetExceeded(
                f"{self.what} expands to more than {self.limit:,} bytes when decompressed: "
                "refused (max_expanded_bytes; a ZIP bomb?)"
            )


class CountingReader:
    """A binary stream read in bounded pieces, each piece spent from a :class:`Budget`.

    ``read(n)`` never asks the underlying (decompressing) stream for more than ``READ_PIECE``
    bytes at once, so a compressed stream cannot expand a huge block in one call.
    """

    def __init__(self, stream: BinaryIO, budget: Budget) -> None:
        self._stream = stream
        self._budget = budget

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > READ_PIECE:
            n = READ_PIECE
        data = self._stream.read(n)
        self._budget.spend(len(data))
        return data

    def read_all(self) -> bytes:
        parts: list[bytes] = []
        while piece := self.read(READ_PIECE):
            parts.append(piece)
        return b"".join(parts)
