"""Highlights: where a search hit matched its query, as passages with character offsets.

A query's *terms* are its words as the lexical index sees them: tantivy's English analyzer
(letters and digits, lowercased, accents folded, Porter2 stems; the embedded store's BM25
analyzer), less English stop words (a passage lit up at every "the" helps nobody). A hit's text
is tokenized by the same analyzer, with character offsets, and every token whose stem is a query
term is a *match* (only the words that may stem to a term are tokenized: :func:`matches`). The
best passage is the window of at most ``max_chars`` characters holding the most distinct terms
(then the most matches, then the earliest), widened to the sentence or word boundaries around
it; further passages come from the matches left outside the ones chosen.

A hit the lexical leg did not find (dense only) often shares no term with the query: its
passage is the opening of its text, with no matches. (Picking its best sentence by embedding
similarity costs one embedder call per hit: measured in docs/store.md, "Explain, highlights,
context", and not done.)

Offsets count Unicode code points (Python ``str`` indices), not UTF-16 units or bytes.
"""

from __future__ import annotations

import functools
import re
import string
import threading
import unicodedata
from dataclasses import dataclass

import tantivy

from ragserve.errors import InvalidInput
from ragserve.types import JSONDict

#: Upper bounds on what one request may ask for.
MAX_PASSAGES = 5
MAX_PASSAGE_CHARS = 2000

_SENTENCE_START = re.compile(r"(?:[.!?\u2026][\"')\]]*\s+|\n\s*)")
_local = threading.local()
_ASCII_ALNUM = frozenset(string.ascii_lowercase + string.digits)
_NON_ASCII = re.compile(r"[^\x00-\x7f\s]")
#: Unicode categories that are never part of a token (the tokenizer splits on anything not
#: alphanumeric), so an ASCII word next to one ends there as it would at a space: punctuation,
#: math, currency and modifier symbols, space separators (tests/test_passages.py checks every
#: such character against the analyzer). Other characters (letters, marks, digits, other
#: symbols) may be part of a token, which the analyzer folds and bounds.
_SEPARATOR_CATEGORIES = frozenset(
    {"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "Zs"}
)
_RUN = re.compile(r"\S*")
_WORD = re.compile(r"[a-z0-9]*")


@dataclass(frozen=True, slots=True)
class HighlightSpec:
    """Up to ``passages`` passages per hit, each at most ``max_chars`` characters."""

    passages: int = 1
    max_chars: int = 200

    def check(self) -> HighlightSpec:
        for name, lo, hi in (("passages", 1, MAX_PASSAGES), ("max_chars", 20, MAX_PASSAGE_CHARS)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise InvalidInput(
                    f"highlight {name} must be an integer between {lo} and {hi}, got {value!r}"
                )
        return self


def _analyzer() -> tantivy.TextAnalyzer:
    """The BM25 analyzer plus English stop words; one per thread (pyo3 objects are not
    shared across threads here)."""
    analyzer: tantivy.TextAnalyzer | None = getattr(_local, "analyzer", None)
    if analyzer is None:
        analyzer = _local.analyzer = (
            tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.remove_long(64))
            .filter(tantivy.Filter.lowercase())
            .filter(tantivy.Filter.stopword("english"))
            .filter(tantivy.Filter.ascii_fold())
            .filter(tantivy.Filter.stemmer("english"))
            .build()
        )
    return analyzer


def query_terms(query: str) -> frozenset[str]:
    """The indexed forms (stems) of the query's words, stop words left out."""
    return frozenset(_analyzer().analyze(query))


def matches(text: str, terms: frozenset[str]) -> list[tuple[int, int, str]]:
    """(start, end, term) of every token of ``text`` whose stem is one of ``terms``.

    Only the words that could stem to a term are looked at: those starting with a term's
    surface prefix (:func:`_surface_prefix`) at a word start. An ASCII word is stemmed alone
    (:func:`_stem`, cached); a whitespace-delimited run holding a character outside ASCII that
    may be part of a token (a letter, a mark: not punctuation like an en dash) goes to the
    analyzer whole (accents are folded before stemming, and its tokens' bounds are the
    analyzer's business). The same tokens as tokenizing all of ``text``, at a fraction of the
    cost."""
    if not terms:
        return []
    low = text.lower()
    if len(low) != len(text):  # offsets in ``low`` would not be those of ``text``
        return _tokens(text, terms, 0)
    starts: set[int] = set()
    for prefix in _prefixes(terms):
        i = low.find(prefix)
        while i >= 0:
            if i == 0 or low[i - 1] not in _ASCII_ALNUM:
                starts.add(i)
            i = low.find(prefix, i + 1)
    runs = [] if text.isascii() else _non_ascii_runs(text)
    out: list[tuple[int, int, str]] = []
    if runs:
        out = _run_tokens(text, runs, terms)
        starts = {i for i in starts if not any(lo <= i < hi for lo, hi in runs)}
    for i in starts:
        j = _WORD.match(low, i).end()  # type: ignore[union-attr]
        term = _stem(low[i:j])
        if term in terms:
            out.append((i, j, term))
    out.sort()
    return out


@functools.lru_cache(maxsize=1 << 14)
def _stem(word: str) -> str:
    """The indexed form of one lowercase ASCII word; "" for a stop word (or an empty or
    overlong one): what the analyzer makes of it."""
    found = _analyzer().analyze(word)
    return found[0] if found else ""


def _non_ascii_runs(text: str) -> list[tuple[int, int]]:
    """The whitespace-delimited runs of ``text`` holding a character outside ASCII that may be
    part of a token (:data:`_SEPARATOR_CATEGORIES`), in order."""
    runs: list[tuple[int, int]] = []
    end = -1
    for m in _NON_ASCII.finditer(text):
        i = m.start()
        if i < end or _separator(text[i]):
            continue  # in the run just taken, or never in a token
        lo = i
        while lo > 0 and not text[lo - 1].isspace():
            lo -= 1
        end = _RUN.match(text, i).end()  # type: ignore[union-attr]
        runs.append((lo, end))
    return runs


@functools.lru_cache(maxsize=1024)
def _separator(char: str) -> bool:
    return unicodedata.category(char) in _SEPARATOR_CATEGORIES


def _run_tokens(
    text: str, runs: list[tuple[int, int]], terms: frozenset[str]
) -> list[tuple[int, int, str]]:
    """The matches inside ``runs`` (whitespace-delimited, in order), in one analyzer call:
    the runs joined by newlines (never inside a token), each token mapped back to its run."""
    if len(runs) == 1:
        return _tokens(text[runs[0][0] : runs[0][1]], terms, runs[0][0])
    joined = "\n".join(text[lo:hi] for lo, hi in runs)
    out: list[tuple[int, int, str]] = []
    k = at = 0  # the run a token is in, and where that run starts in ``joined``
    for s, e, term in _tokens(joined, terms, 0):
        while s >= at + runs[k][1] - runs[k][0] + 1:
            at += runs[k][1] - runs[k][0] + 1
            k += 1
        shift = runs[k][0] - at
        out.append((s + shift, e + shift, term))
    return out


def _tokens(text: str, terms: frozenset[str], shift: int) -> list[tuple[int, int, str]]:
    return [
        (t.char_offset_from + shift, t.char_offset_to + shift, t.text)
        for t in _analyzer().pre_tokenize(text).tokens
        if t.text in terms
    ]


def _surface_prefix(term: str) -> str:
    """What every word stemming to ``term`` starts with, lowercased (ASCII words).

    The English (Porter2) stemmer only rewrites a word's end, and what it writes that the
    word does not have is at most a final ``e``, ``i`` or ``y`` (hop*ing* -> hope, cr*y* ->
    cri, relat*ional* -> relate, sk*ies* -> sky), a final ``l`` after ``b`` (capa*bility* ->
    capabl) or a final ``le`` / ``ie`` (sensi*bility* -> sensible, d*ying* -> die): those
    are taken off. Checked over the SciFact and ArguAna vocabularies (bench/passages_cost.py
    ``--check``) and on the hard cases in tests/test_passages.py."""
    if len(term) > 2 and term.endswith(("le", "ie")):
        return term[:-2]
    if len(term) > 1 and term.endswith(("e", "i", "y", "bl")):
        return term[:-1]
    return term


@functools.lru_cache(maxsize=256)
def _prefixes(terms: frozenset[str]) -> tuple[str, ...]:
    """The terms' surface prefixes, less those starting with another one (a word starting
    with ``cell`` starts with ``c`` too: one scan of the text finds both)."""
    out: list[str] = []
    for prefix in sorted({_surface_prefix(t) for t in terms}):  # "c" sorts before "cell"
        if not out or not prefix.startswith(out[-1]):
            out.append(prefix)
    return tuple(out)


def _best_window(found: list[tuple[int, int, str]], max_chars: int) -> tuple[int, int]:
    """Indexes [i, j) of the run of matches spanning at most ``max_chars`` with the most
    distinct terms, then the most matches, then the earliest."""
    best = (-1, -1, 0, 0)
    counts: dict[str, int] = {}
    j = 0
    n = len(found)
    for i in range(n):
        if j < i:
            j = i
            counts.clear()
        limit = found[i][0] + max_chars
        while j < n and found[j][1] <= limit:
            term = found[j][2]
            counts[term] = counts.get(term, 0) + 1
            j += 1
        if j > i:
            if (len(counts), j - i) > best[:2]:
                best = (len(counts), j - i, i, j)
            term = found[i][2]
            if counts[term] == 1:
                del counts[term]
            else:
                counts[term] -= 1
    return (best[2], best[3]) if best[0] > 0 else (0, 1)


def _bounds(text: str, lo: int, hi: int, max_chars: int) -> tuple[int, int]:
    """A passage of at most ``max_chars`` around [lo, hi): from the start of the sentence
    that holds ``lo`` if it fits, else centred, cut at word boundaries."""
    room = max(max_chars - (hi - lo), 0)
    start = max(0, lo - room // 2)
    sentence = None
    for m in _SENTENCE_START.finditer(text, max(0, lo - room), lo + 1):
        if m.end() <= lo:
            sentence = m.end()
    if sentence is not None:
        start = sentence
    elif start > 0 and not text[start - 1].isspace():
        space = text.find(" ", start, lo)
        start = space + 1 if space >= 0 else lo
    end = min(len(text), start + max_chars)
    if end < len(text) and not text[end].isspace():
        space = text.rfind(" ", hi, end)
        end = space if space >= 0 else end
    while start < end and text[start].isspace():
        start += 1
    return start, max(end, min(hi, start + max_chars))


def highlight(text: str, terms: frozenset[str], spec: HighlightSpec) -> list[JSONDict]:
    """The best passages of ``text`` for ``terms``, best first: ``{"start", "end", "text",
    "matches"}`` where start/end are offsets in ``text`` and each match ``[s, e]`` is an offset
    pair in the passage's own text."""
    found = matches(text, terms)
    if not found:
        start, end = _bounds(text, 0, 0, spec.max_chars)
        return [{"start": start, "end": end, "text": text[start:end], "matches": []}]
    out: list[JSONDict] = []
    left = found
    while left and len(out) < spec.passages:
        i, j = _best_window(left, spec.max_chars)
        start, end = _bounds(text, left[i][0], left[j - 1][1], spec.max_chars)
        inside = [(s, e) for s, e, _ in found if s >= start and e <= end]
        out.append(
            {
                "start": start,
                "end": end,
                "text": text[start:end],
                "matches": [[s - start, e - start] for s, e in inside],
            }
        )
        left = [m for m in left if m[1] <= start or m[0] >= end]
    return out
