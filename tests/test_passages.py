"""Highlights and context expansion: pure functions over texts and chunks."""

from __future__ import annotations

import itertools
import random
import sys
import threading
import unicodedata

import pytest

from ragserve.context import ExpandSpec, expand, merge
from ragserve.errors import InvalidInput
from ragserve.highlight import (
    _SEPARATOR_CATEGORIES,
    HighlightSpec,
    _analyzer,
    _surface_prefix,
    _tokens,
    highlight,
    matches,
    query_terms,
)
from ragserve.types import Chunk


def test_query_terms_are_stems_without_stop_words() -> None:
    assert query_terms("The RUNNING of Mice, and café") == {"run", "mice", "cafe"}


def test_matches_are_code_point_offsets_of_stemmed_words() -> None:
    text = "Ünïcode first: les cafés, a runner runs; CAFE again"
    found = matches(text, query_terms("café run"))
    assert [text[s:e] for s, e, _ in found] == ["cafés", "runs", "CAFE"]  # runner: stem runner


HARD_WORDS = (
    "capability possibilities sensibility dying lying tying skies hoping hopping cry cries "
    "relational valency conditional organization organizer generously gently early only news "
    "agreed proceed inning ties tied abilities ugly idly running RUNS Runner"
)


@pytest.mark.parametrize("word", HARD_WORDS.split())
def test_words_start_with_their_stems_surface_prefix(word: str) -> None:
    (stem,) = query_terms(word)
    assert word.lower().startswith(_surface_prefix(stem))


@pytest.mark.parametrize(
    "text",
    [
        HARD_WORDS,
        HARD_WORDS.upper(),
        "Caf\u00e9s and CAF\u00c9, na\u00efvet\u00e9; \u0130stanbul runs (lower() grows it)",
        "\u212aelvin-sign Kelvin \u03b1cell cell\u03b1 x_cell cell_y 12cell cell12 cells.",
        "glued:capability,dying;skies(hoping)[cry]{relational}/valency\\organizer",
        "a" * 70 + "ability " + "capability" * 7 + " \n\t\u00a0capability\u2003dying",
        "",
        "   ",
    ],
)
def test_matches_are_those_of_tokenizing_the_whole_text(text: str) -> None:
    terms = query_terms(HARD_WORDS + " cell kelvin cafe naivete istanbul ability")
    assert matches(text, terms) == _tokens(text, terms, 0)


def test_matches_agree_with_the_whole_text_on_random_texts() -> None:
    rng = random.Random(20)
    words = [*HARD_WORDS.split(), "cell", "Cell", "caf\u00e9", "\u0131", "x", "the", "\u00df"]
    seps = [" ", "  ", "\n", "\u00a0", "\u2003", ",", "-", "_", "\u00e9", "", ".\n"]
    terms = query_terms(HARD_WORDS + " cell cafe ss")
    for _ in range(300):
        text = "".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randrange(40)))
        assert matches(text, terms) == _tokens(text, terms, 0), text


def test_matches_stem_ascii_words_alone_and_tokenize_only_non_ascii_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terms = query_terms("memory safety caf\u00e9")
    analyzed: list[str] = []

    def tokens(text: str, terms: frozenset[str], shift: int) -> list[tuple[int, int, str]]:
        analyzed.append(text)
        return _tokens(text, terms, shift)

    monkeypatch.setattr("ragserve.highlight._tokens", tokens)
    assert matches("Nothing to see here at all.", terms) == []
    text = "Some MEMORY, then unsafe things; safety-first."
    # "unsafe": saf inside a word is no token start
    assert [text[s:e] for s, e, _ in matches(text, terms)] == ["MEMORY", "safety"]
    assert analyzed == []  # ASCII words are stemmed one by one (and cached)
    text = "A caf\u00e9-safety note, safety (na\u00efve) and memory."
    assert [text[s:e] for s, e, _ in matches(text, terms)] == [
        "caf\u00e9", "safety", "safety", "memory",
    ]  # fmt: skip
    assert analyzed == ["caf\u00e9-safety\n(na\u00efve)"]  # the two non-ASCII runs, joined


def test_every_separator_character_splits_tokens_as_a_space_does() -> None:
    """What lets an ASCII word next to such a character skip the analyzer (``_separator``)."""
    chars = [
        chr(c)
        for c in range(0x80, sys.maxunicode + 1)
        if unicodedata.category(chr(c)) in _SEPARATOR_CATEGORIES
    ]
    assert len(chars) > 1500 and all(c.lower() == c for c in chars)
    text = " ".join(f"qq{c}zz" for c in chars)
    assert [t.text for t in _analyzer().pre_tokenize(text).tokens] == ["qq", "zz"] * len(chars)
    mixed = "p\u22650.05 \u00b1cell\u2013cells \u03b1-cell cell\u00b2 \u2460cell"
    terms = query_terms("cell p 05")
    assert matches(mixed, terms) == _tokens(mixed, terms, 0)


def test_the_best_window_holds_the_most_distinct_terms() -> None:
    filler = "Nothing to see here. " * 10
    text = (
        f"{filler}Memory appears alone. {filler}"
        "Memory safety comes from ownership. More memory. "
        f"{filler}Safety last."
    )
    (p,) = highlight(text, query_terms("memory safety"), HighlightSpec(max_chars=60))
    assert p["text"].startswith("Memory safety comes from ownership.")
    assert text[p["start"] : p["end"]] == p["text"] and len(p["text"]) <= 60
    assert [p["text"][s:e] for s, e in p["matches"]] == ["Memory", "safety", "memory"]
    two = highlight(text, query_terms("memory safety"), HighlightSpec(passages=3, max_chars=60))
    assert len(two) == 3 and two[0] == p
    spans = sorted((q["start"], q["end"]) for q in two)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # disjoint


def test_a_hit_without_terms_gets_its_opening_and_no_matches() -> None:
    text = "A dense-only hit. " * 30
    (p,) = highlight(text, query_terms("unrelated"), HighlightSpec(max_chars=50))
    assert p["start"] == 0 and p["matches"] == [] and len(p["text"]) <= 50
    assert highlight("", query_terms("x"), HighlightSpec())[0]["text"] == ""


def test_analyzers_work_from_several_threads() -> None:
    out: list[object] = []
    threads = [
        threading.Thread(target=lambda: out.append(query_terms("running mice"))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [{"run", "mice"}] * 4


@pytest.mark.parametrize(
    "spec", [HighlightSpec(passages=0), HighlightSpec(max_chars=10**6), HighlightSpec(True, 50)]
)
def test_bad_highlight_specs(spec: HighlightSpec) -> None:
    with pytest.raises(InvalidInput):
        spec.check()


# --------------------------------------------------------------------------- context

DOC = "Intro text here. Part A starts. More of A. End of A. Part B now. B goes on. The end."


def chunks_of(bounds: list[tuple[int, int]], headings: list[list[str]]) -> list[Chunk]:
    return [
        Chunk("d", i, DOC[s:e], s, e, {"tokens": len(DOC[s:e].split()), "headings": h})
        for i, ((s, e), h) in enumerate(zip(bounds, headings, strict=True))
    ]


def cut(*phrases: str) -> list[tuple[int, int]]:
    """Chunk bounds: each phrase's span in DOC."""
    return [(DOC.index(p), DOC.index(p) + len(p)) for p in phrases]


# Overlapping chunks (each repeats the end of the one before) and a skipped gap.
BOUNDS = cut(
    "Intro text here.", "here. Part A starts.", "More of A.", "End of A. Part", "Part B now.",
    "B goes on.", "on. The end.",
)  # fmt: skip
HEADS = [[], ["A"], ["A"], ["A"], ["B"], ["B"], ["B"]]


def test_merge_takes_each_character_once_and_fills_gaps() -> None:
    text, start, end = merge(chunks_of(BOUNDS, HEADS)[1:6])
    assert text == DOC[BOUNDS[1][0] : BOUNDS[5][1]]
    assert (start, end) == (BOUNDS[1][0], BOUNDS[5][1])


def test_merge_without_offsets_joins_texts() -> None:
    text, start, _ = merge([Chunk("d", 0, "one"), Chunk("d", 1, "two")])
    assert (text, start) == ("one\ntwo", -1)


def around(got: dict[str, object] | None, window: list[Chunk], hit: int) -> str:
    """The context's whole text: before + the hit's text + after."""
    assert got is not None
    return f"{got['before']}{window[hit].text}{got['after']}"


def test_neighbours_alternate_and_respect_the_budget() -> None:
    window = chunks_of(BOUNDS, HEADS)
    got = expand(3, window[3].text, window, ExpandSpec(neighbors=2))
    assert got is not None and (got["first_chunk"], got["last_chunk"]) == (1, 5)
    assert around(got, window, 3) == DOC[BOUNDS[1][0] : BOUNDS[5][1]] and not got["truncated"]
    assert got["before"] == DOC[BOUNDS[1][0] : BOUNDS[3][0]]  # no repeat of the hit's text
    assert got["after"] == DOC[BOUNDS[3][1] : BOUNDS[5][1]]
    # "End of A. Part" is 4 tokens; "More of A." adds 3, "Part B now." 2 of its 3 (overlap).
    small = expand(3, window[3].text, window, ExpandSpec(neighbors=2, max_tokens=7))
    assert small is not None and (small["first_chunk"], small["last_chunk"]) == (2, 3)
    assert small["tokens"] == 7 and small["truncated"]
    alone = expand(3, window[3].text, window, ExpandSpec(neighbors=2, max_tokens=1))
    assert alone is not None and (alone["before"], alone["after"]) == ("", "")
    assert (alone["start"], alone["end"]) == BOUNDS[3] and alone["truncated"]
    assert expand(9, "x", window, ExpandSpec(neighbors=1)) is None  # the hit's chunk is gone
    # The document was replaced since the search: the chunk at that index has another text.
    assert expand(3, "End of B.", window, ExpandSpec(neighbors=1)) is None


def test_context_without_offsets_joins_the_texts_around_the_hit() -> None:
    window = [Chunk("d", i, t) for i, t in enumerate(["one", "two", "three"])]
    got = expand(1, "two", window, ExpandSpec(neighbors=1))
    assert got is not None and (got["before"], got["after"]) == ("one\n", "\nthree")
    assert (got["start"], got["end"]) == (-1, -1)
    assert around(got, window, 1) == merge(window)[0]
    edge = expand(0, "one", window, ExpandSpec(neighbors=1))
    assert edge is not None and (edge["before"], edge["after"]) == ("", "\ntwo")


def test_section_stops_at_a_heading_change() -> None:
    window = chunks_of(BOUNDS, HEADS)
    got = expand(2, window[2].text, window, ExpandSpec(section=True))
    assert got is not None and (got["first_chunk"], got["last_chunk"]) == (1, 3)
    got = expand(5, window[5].text, window, ExpandSpec(section=True, neighbors=1))
    assert got is not None and (got["first_chunk"], got["last_chunk"]) == (4, 6)
    flat = chunks_of(BOUNDS, [[]] * len(BOUNDS))  # no headings: the document is one section
    got = expand(0, flat[0].text, flat, ExpandSpec(section=True))
    assert around(got, flat, 0) == DOC


@pytest.mark.parametrize(
    "spec",
    [ExpandSpec(), ExpandSpec(neighbors=-1), ExpandSpec(neighbors=21), ExpandSpec(1, False, 0)],
)
def test_bad_expand_specs(spec: ExpandSpec) -> None:
    with pytest.raises(InvalidInput):
        spec.check()
