"""Context expansion: a hit's neighbouring chunks, or its heading section, as one text.

``neighbors=n`` takes up to ``n`` chunks on each side of the hit; ``section=True`` takes the
chunks around it that share its heading path (``metadata["headings"]``; a document without
headings is one section); both: the section, at most ``n`` chunks each side. Chunks are added
nearest first, alternating before and after, while the merged text stays within ``max_tokens``
(a side whose next chunk would not fit stops; the hit itself is always there).

Merging. Each chunk is the source span ``text[start:end]`` of its document, and consecutive
chunks overlap by the chunker's overlap: the merged text takes each character once, so it is
exactly the document's span from the first chunk's start to the last one's end (the gaps
between chunks the chunker skipped, whitespace, are filled with as many spaces or newlines).
Offsets in the result are document offsets.

The result does not repeat the hit's own text: it gives what comes ``before`` and ``after`` it,
so the context is ``before + hit text + after`` (with offsets: the document's text from
``start`` to ``end``; without: the chunks joined by newlines). Tokens are counted from each
chunk's stored count (``metadata["tokens"]``, the collection's embedder; about a quarter of the
characters for chunks stored without it), the overlap taken off pro rata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ragserve.errors import InvalidInput
from ragserve.types import Chunk, JSONDict

MAX_NEIGHBORS = 20
MAX_CONTEXT_TOKENS = 8192
#: Chunks read on each side of a hit for ``section=True`` without ``neighbors``.
SECTION_REACH = 32


@dataclass(frozen=True, slots=True)
class ExpandSpec:
    neighbors: int = 0
    section: bool = False
    max_tokens: int = 1024

    def check(self) -> ExpandSpec:
        for name, lo, hi in (
            ("neighbors", 0, MAX_NEIGHBORS),
            ("max_tokens", 1, MAX_CONTEXT_TOKENS),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise InvalidInput(
                    f"expand {name} must be an integer between {lo} and {hi}, got {value!r}"
                )
        if not isinstance(self.section, bool):
            raise InvalidInput("expand section must be true or false")
        if not self.neighbors and not self.section:
            raise InvalidInput('expand needs "neighbors" above 0 or "section": true')
        return self

    def reach(self) -> int:
        """Chunks to read on each side of a hit."""
        return self.neighbors if self.neighbors else SECTION_REACH

    def window(self, chunk_index: int) -> tuple[int, int]:
        return max(0, chunk_index - self.reach()), chunk_index + self.reach()


def _tokens(chunk: Chunk) -> int:
    tokens = chunk.metadata.get("tokens")
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
        return tokens
    return max(1, len(chunk.text) // 4)


def _has_offsets(chunks: Sequence[Chunk]) -> bool:
    """Whether the chunks carry real document offsets (in order, each as long as its text)."""
    last_start, last_end = -1, -1
    for c in chunks:
        if c.end - c.start != len(c.text) or c.start < last_start or c.end <= last_end:
            return False
        last_start, last_end = c.start, c.end
    return bool(chunks) and chunks[-1].end > 0


def merge(chunks: Sequence[Chunk]) -> tuple[str, int, int]:
    """(text, start, end) of consecutive chunks of one document, overlaps taken once."""
    if not _has_offsets(chunks):
        return "\n".join(c.text for c in chunks), -1, -1
    parts = [chunks[0].text]
    end = chunks[0].end
    for c in chunks[1:]:
        if c.start >= end:
            gap = c.start - end
            parts.append(" " if gap == 1 else "\n" * gap)
            parts.append(c.text)
        elif c.end > end:
            parts.append(c.text[end - c.start :])
        end = max(end, c.end)
    return "".join(parts), chunks[0].start, end


def _new_tokens(chunk: Chunk, covered: tuple[int, int], with_offsets: bool) -> int:
    """Tokens ``chunk`` adds to a span already covering ``covered`` (pro rata of new chars)."""
    tokens = _tokens(chunk)
    if not with_offsets or not chunk.text:
        return tokens
    lo, hi = covered
    shared = max(0, min(chunk.end, hi) - max(chunk.start, lo))
    return round(tokens * (len(chunk.text) - shared) / len(chunk.text))


def expand(hit: int, text: str, window: Sequence[Chunk], spec: ExpandSpec) -> JSONDict | None:
    """The context of chunk ``hit`` (whose text is ``text``) from ``window`` (its document's
    chunks around it, in order): ``{"before", "after", "start", "end", "first_chunk",
    "last_chunk", "tokens", "truncated"}``, the context being ``before + text + after``.
    None if the hit's chunk is not in ``window`` with that text any more (its document
    changed)."""
    by_index = {c.index: c for c in window}
    center = by_index.get(hit)
    if center is None or center.text != text:
        return None
    with_offsets = _has_offsets(window)
    headings = center.metadata.get("headings")
    reach = spec.reach()
    lo = hi = hit
    covered = (center.start, center.end)
    tokens = _tokens(center)
    truncated = False
    open_sides = {-1: True, 1: True}
    step = 1
    while any(open_sides.values()) and step <= reach:
        for side in (-1, 1):
            if not open_sides[side]:
                continue
            index = hit + side * step
            chunk = by_index.get(index)
            if chunk is None or (spec.section and chunk.metadata.get("headings") != headings):
                open_sides[side] = False
                continue
            extra = _new_tokens(chunk, covered, with_offsets)
            if tokens + extra > spec.max_tokens:
                open_sides[side] = False
                truncated = True
                continue
            tokens += extra
            lo, hi = min(lo, index), max(hi, index)
            covered = (min(covered[0], chunk.start), max(covered[1], chunk.end))
        step += 1
    chosen = [by_index[i] for i in range(lo, hi + 1)]
    merged, start, end = merge(chosen)
    if start >= 0:  # the document's span: cut around the hit's own
        before, after = merged[: center.start - start], merged[center.end - start :]
    else:  # joined by newlines
        before = "".join(c.text + "\n" for c in chosen[: hit - lo])
        after = "".join("\n" + c.text for c in chosen[hit - lo + 1 :])
    return {
        "before": before,
        "after": after,
        "start": start,
        "end": end,
        "first_chunk": lo,
        "last_chunk": hi,
        "tokens": tokens,
        "truncated": truncated,
    }
