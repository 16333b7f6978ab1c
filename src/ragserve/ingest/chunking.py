"""Token-aware chunking: pure functions from a :class:`~ragserve.types.Document` to chunks.

Sizes are counted in tokens of the collection's embedder, through a ``token_spans`` callable
(``Embedder.token_spans``: the character offsets of every token, without special tokens), so the
same code serves the real tokenizer and a fake in tests.

How a chunk is cut. From its start token, a chunk may take ``budget`` tokens. If the document ends
within that window it does; otherwise the end is the best boundary in the second half of the window,
ranked: a section change (a heading or a page), then a paragraph break (a blank line), then a
sentence end, then any token boundary; among equals the latest wins. The next chunk starts
``overlap`` tokens before the previous end, so consecutive chunks share exactly ``overlap`` tokens.

What a chunk carries.

* ``text`` is the raw source span: ``doc.text[chunk.start:chunk.end] == chunk.text``.
* ``metadata["headings"]``: the heading path of the section where the chunk's new content begins
  (the first token after the overlap); ``metadata["pages"]``: every page the span touches. Each is
  present only when the document has that structure. ``metadata["tokens"]``: tokens in the span.
* ``metadata["embed_prefix"]`` (only with ``title_prefix=True`` and a title or heading path): the
  text put before ``text`` when embedding: the title and the heading path, one per line, then a
  blank line. :func:`embedding_text` returns what to embed; store and show ``text``.

The prefix plus the span never exceed ``max_tokens`` (the embedder's maximum length less its special
tokens: 510 for bge-small); a long title is cut to a quarter of that so the span keeps most room.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ragserve.errors import InvalidInput
from ragserve.ingest.limits import BudgetExceeded
from ragserve.types import Chunk, Document, Section

#: Character offsets of each token: an ``(n, 2)`` integer array, or a sequence of pairs.
Spans = Sequence[tuple[int, int]] | npt.NDArray[np.integer]
TokenSpans = Callable[[str], Spans]

#: A title or a heading is cut to this many characters before it joins a chunk's prefix (which
#: is then cut to its token budget): a 10 MB title is never split or tokenized whole.
PREFIX_MAX_CHARS = 4096

#: Boundary ranks, best last.
TOKEN, SENTENCE, PARAGRAPH, SECTION = 0, 1, 2, 3

_SENTENCE_END = re.compile("[.!?\u2026][\"')\\]\u00bb\u201d\u2019]*$")
_PARAGRAPH_GAP = re.compile(r"\n[ \t\r\f\v]*\n")

__all__ = [
    "PREFIX_MAX_CHARS",
    "Spans",
    "TokenSpans",
    "as_spans",
    "chunk_document",
    "content_budget",
    "content_hash",
    "embedding_text",
    "heading_prefix",
]


@dataclass(frozen=True, slots=True)
class _Structure:
    """Sections sorted by start, with a lookup from a character offset to its section."""

    sections: tuple[Section, ...]
    starts: list[int]

    @classmethod
    def of(cls, doc: Document) -> _Structure:
        ordered = tuple(sorted(doc.sections, key=lambda s: (s.start, s.end)))
        return cls(ordered, [s.start for s in ordered])

    def at(self, offset: int) -> Section | None:
        i = bisect.bisect_right(self.starts, offset) - 1
        if i >= 0 and self.sections[i].start <= offset < self.sections[i].end:
            return self.sections[i]
        return None

    def pages(self, start: int, end: int) -> list[int]:
        found = {
            s.page for s in self.sections if s.page is not None and s.start < end and s.end > start
        }
        return sorted(found)


def content_budget(max_length: int, token_spans: TokenSpans, document_prefix: str = "") -> int:
    """``max_tokens`` for :func:`chunk_document` from a model spec: its ``max_length`` less the
    two special tokens ([CLS] ... [SEP]) and the tokens of the document prefix it adds itself."""
    prefix_tokens = len(token_spans(document_prefix)) if document_prefix else 0
    return max(1, max_length - 2 - prefix_tokens)


def heading_prefix(title: str | None, headings: Sequence[str]) -> str:
    """The text embedded before a chunk: title and heading path, one per line, a blank line."""
    lines: list[str] = []
    clean_title = " ".join((title or "")[:PREFIX_MAX_CHARS].split())
    if clean_title:
        lines.append(clean_title)
    path = [h for h in (" ".join(x[:PREFIX_MAX_CHARS].split()) for x in headings) if h]
    if path and path[0] == clean_title:  # an H1 that repeats the title
        path = path[1:]
    if path:
        lines.append(" > ".join(path))
    return "\n".join(lines) + "\n\n" if lines else ""


def embedding_text(chunk: Chunk) -> str:
    """What to give the embedder for ``chunk``: its prefix (if any) followed by its text."""
    prefix = chunk.metadata.get("embed_prefix", "")
    return f"{prefix}{chunk.text}" if isinstance(prefix, str) else chunk.text


def as_spans(spans: Spans) -> npt.NDArray[np.int64]:
    """Token offsets as an ``(n, 2)`` int64 array (16 bytes a token; no Python object each)."""
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def _boundary_ranks(
    text: str, spans: npt.NDArray[np.int64], structure: _Structure
) -> npt.NDArray[np.int8]:
    """``ranks[i]``: how good a chunk end is between token ``i - 1`` and token ``i``."""
    ranks = _text_ranks(text, spans)
    starts = sorted({s.start for s in structure.sections} | {s.end for s in structure.sections})
    if starts:
        offsets = np.asarray(starts, dtype=np.int64)
        # first token starting at or after each offset
        i = np.searchsorted(spans[:, 0], offsets, side="left")
        ok = (i > 0) & (i < len(spans))
        i = i[ok]
        i = i[spans[i - 1, 1] <= offsets[ok]]
        ranks[i] = SECTION
    return ranks


_ENDERS = ".!?\u2026"
_CLOSERS = "\"')]\u00bb\u201d\u2019"


def _text_ranks(text: str, spans: npt.NDArray[np.int64]) -> npt.NDArray[np.int8]:
    """Paragraph breaks (a blank line), sentence ends and line breaks between tokens.

    Vectorized over tokens (a 10 MB text has millions): only the tokens that may end a
    sentence (their last character is an ender or a closer) are looked at one by one.
    """
    n = len(spans)
    ranks = np.full(n + 1, TOKEN, dtype=np.int8)
    ranks[n] = SECTION
    if n < 2:
        return ranks
    starts, ends = spans[:, 0], spans[:, 1]
    gap = np.zeros(n, dtype=bool)
    gap[1:] = starts[1:] > ends[:-1]  # gap[i]: text between token i - 1 and token i

    def token_after(positions: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """For each character position inside a gap, the token that follows the gap (else 0)."""
        i = np.searchsorted(starts, positions, side="right")
        ok = (i > 0) & (i < n)
        i = np.where(ok, i, 0)
        inside = ok & (ends[np.maximum(i - 1, 0)] <= positions)
        return np.where(inside, i, 0)

    # Line breaks, and sentence ends (checked with the regex on the few candidate tokens).
    newlines = np.fromiter((m.start() for m in re.finditer("\n", text)), dtype=np.int64)
    if len(newlines):
        ranks[token_after(newlines)] = SENTENCE
    last = ends[:-1] - 1
    candidates = np.nonzero(gap[1:])[0] + 1
    for i in candidates[_last_char_in(text, last[candidates - 1], _ENDERS + _CLOSERS)]:
        prev_start, prev_end = int(starts[i - 1]), int(ends[i - 1])
        if _SENTENCE_END.search(text[prev_start:prev_end]):
            ranks[i] = SENTENCE
    # Paragraph breaks: a blank line inside one gap.
    blanks = [(m.start(), m.end()) for m in _PARAGRAPH_GAP.finditer(text)]
    if blanks:
        bounds = np.asarray(blanks, dtype=np.int64)
        after = token_after(bounds[:, 0])
        whole = (after > 0) & (starts[after] >= bounds[:, 1])
        ranks[after[whole]] = PARAGRAPH
    ranks[0] = TOKEN
    return ranks


def _last_char_in(text: str, positions: npt.NDArray[np.int64], chars: str) -> npt.NDArray[np.bool_]:
    """Whether ``text[p]`` is one of ``chars``, for each position, without a Python step (or
    object) per position: the text's code points as a uint32 array (4 bytes a character)."""
    if not len(positions):
        return np.zeros(0, dtype=bool)
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return np.isin(points[positions], np.asarray([ord(c) for c in chars], dtype=np.uint32))


def _fit_prefix(prefix: str, token_spans: TokenSpans, limit: int) -> tuple[str, int]:
    """The prefix cut to at most ``limit`` tokens (at a token boundary), and its token count."""
    if not prefix:
        return "", 0
    spans = as_spans(token_spans(prefix))
    if len(spans) <= limit:
        return prefix, len(spans)
    if limit <= 0:
        return "", 0
    return prefix[: int(spans[limit - 1, 1])] + "\n\n", limit


def chunk_document(
    doc: Document,
    token_spans: TokenSpans,
    *,
    chunk_tokens: int,
    overlap: int,
    title_prefix: bool,
    max_tokens: int = 510,
    max_chars: int | None = None,
) -> list[Chunk]:
    """Cut ``doc`` into chunks of at most ``chunk_tokens`` tokens sharing ``overlap`` tokens.

    ``max_tokens`` bounds prefix + span: :func:`content_budget` computes it from the embedder's
    ``max_length`` and document prefix (510 for bge-small). A document without tokens has no
    chunks. A text longer than ``max_chars`` is refused (:class:`BudgetExceeded`) before it is
    tokenized.
    See the module docstring for where chunks end and what their metadata holds.
    """
    if chunk_tokens < 1:
        raise InvalidInput(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise InvalidInput(
            f"overlap must be between 0 and chunk_tokens - 1 ({chunk_tokens - 1}), got {overlap}"
        )
    if max_tokens < 1:
        raise InvalidInput(f"max_tokens must be at least 1, got {max_tokens}")
    text = doc.text
    if max_chars is not None and len(text) > max_chars:
        raise BudgetExceeded(
            f"the text is {len(text):,} characters, over the limit of {max_chars:,} "
            "(max_document_chars)"
        )
    spans = as_spans(token_spans(text))
    if not len(spans):
        return []
    structure = _Structure.of(doc)
    ranks = _boundary_ranks(text, spans, structure)
    prefix_limit = max(0, max_tokens // 4)
    prefix_cache: dict[tuple[str, ...], tuple[str, int]] = {}

    chunks: list[Chunk] = []
    start = 0  # first token of the chunk
    anchor = 0  # first token of the chunk's new content (after the overlap)
    n = len(spans)
    while True:
        section = structure.at(int(spans[anchor, 0]))
        headings = section.headings if section else ()
        prefix, prefix_len = "", 0
        if title_prefix:
            if headings not in prefix_cache:
                prefix_cache[headings] = _fit_prefix(
                    heading_prefix(doc.title, headings), token_spans, prefix_limit
                )
            prefix, prefix_len = prefix_cache[headings]
        budget = max(1, min(chunk_tokens, max_tokens - prefix_len))
        if anchor - start >= budget:  # a long prefix left less room than the overlap
            start = anchor - budget // 2
        end = _choose_end(ranks, start, anchor, budget, overlap, n)
        chunks.append(_make_chunk(doc, len(chunks), spans, start, end, headings, prefix, structure))
        if end >= n:
            return chunks
        next_start = end - overlap
        start = next_start if next_start > start else end
        anchor = end


def _choose_end(
    ranks: npt.NDArray[np.int8], start: int, anchor: int, budget: int, overlap: int, n: int
) -> int:
    limit = start + budget
    if limit >= n:
        return n
    # Never end inside the overlap, take more tokens than the overlap (so the next chunk can start
    # ``overlap`` tokens back and still move on), and fill at least half the window.
    lowest = max(anchor + 1, start + overlap + 1, start + math.ceil(budget / 2))
    if lowest > limit:
        return limit
    # The best rank in [lowest, limit]; among equals the latest (argmax of the reversed window).
    window = ranks[lowest : limit + 1][::-1]
    return limit - int(np.argmax(window))


def _make_chunk(
    doc: Document,
    index: int,
    spans: npt.NDArray[np.int64],
    first: int,
    end: int,
    headings: tuple[str, ...],
    prefix: str,
    structure: _Structure,
) -> Chunk:
    char_start, char_end = int(spans[first, 0]), int(spans[end - 1, 1])
    metadata: dict[str, object] = {"tokens": end - first}
    if headings:
        metadata["headings"] = list(headings)
    pages = structure.pages(char_start, char_end)
    if pages:
        metadata["pages"] = pages
    if prefix:
        metadata["embed_prefix"] = prefix
    return Chunk(
        document_id=doc.id,
        index=index,
        text=doc.text[char_start:char_end],
        start=char_start,
        end=char_end,
        metadata=metadata,
    )


def content_hash(doc: Document) -> str:
    """sha256 (hex) of the document's text, title and metadata as canonical JSON.

    The id is not part of the hash: it answers "did this document's content change?". Metadata must
    be JSON data (what the parsers and the JSON sources produce).
    """
    payload = {"text": doc.text, "title": doc.title, "metadata": doc.metadata}
    try:
        canonical = json.dumps(
            payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"document {doc.id!r}: metadata is not JSON data ({exc})") from None
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
