"""Plain value types shared by every layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JSONDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Section:
    """A span of a document's text with its place in the structure (for chunk metadata)."""

    start: int
    end: int
    headings: tuple[str, ...] = ()
    page: int | None = None


@dataclass(frozen=True, slots=True)
class Document:
    """A document as given by the user (or parsed from a file), before chunking.

    ``sections`` (optional) cover ``text`` in order; parsers fill them with headings and pages.
    """

    id: str
    text: str
    title: str | None = None
    metadata: JSONDict = field(default_factory=dict)
    sections: tuple[Section, ...] = ()


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document: the unit that is embedded and searched."""

    document_id: str
    index: int
    text: str
    start: int = 0
    end: int = 0
    metadata: JSONDict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.document_id}#{self.index}"


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result."""

    document_id: str
    chunk_id: str
    text: str
    score: float
    metadata: JSONDict = field(default_factory=dict)
