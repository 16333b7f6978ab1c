"""Main-content extraction from HTML (ragserve.ingest.html)."""

from __future__ import annotations

from ragserve.ingest.html import extract_html


def texts(page: bytes) -> list[str]:
    return [b.text for b in extract_html(page).blocks]


def test_the_marked_main_element_is_kept_whole_lists_included() -> None:
    page = (
        b"<html><head><title>Guide | Site</title></head><body>"
        b"<div class='menu'><a href='/'>Home</a> <a href='/b'>Blog</a></div>"
        b"<main><h1>Guide</h1><p>Install it first.</p><ul><li>alpha</li><li>beta</li></ul>"
        b"<h2>Use</h2><pre>x = 1\n  y = 2</pre></main></body></html>"
    )
    content = extract_html(page)
    assert content.method == "main-element"
    assert content.title == "Guide"  # the <title> repeats the h1: the site name is dropped
    assert [(b.text, b.level, b.group) for b in content.blocks] == [
        ("Guide", 1, None),
        ("Install it first.", 0, None),
        ("alpha", 0, "list"),
        ("beta", 0, "list"),
        ("Use", 2, None),
        ("x = 1\n  y = 2", 0, None),
    ]


def test_without_semantic_markup_the_heuristics_drop_the_boilerplate() -> None:
    article = " ".join(["Retrieval grounds a language model in the documents it finds."] * 6)
    page = (
        "<html><body><div class='menu'><a href='/'>Home</a> | <a href='/a'>About</a> | "
        "<a href='/c'>Contact</a></div><div class='post'><h1>Grounding</h1>"
        f"<p>{article}</p><p>See <a href='/x'>this page</a> for more.</p></div>"
        "<div class='footer'>Copyright 2026 Example</div></body></html>"
    ).encode()
    content = extract_html(page)
    assert content.method == "heuristic"
    joined = " ".join(texts(page))
    assert article in joined and "Grounding" in joined
    assert "Contact" not in joined and "Copyright" not in joined
    assert "See this page for more." in joined  # a link inside a sentence is content


def test_semantic_chrome_goes_and_og_title_wins() -> None:
    page = (
        b"<html><head><title>t</title><meta property='og:title' content='The Real Title'>"
        b"</head><body><header>Site</header><nav>Home About</nav>"
        b"<article><header><h1>Hello</h1></header><p>Body text.</p></article>"
        b"<aside>Related</aside><footer>foot</footer><script>var a</script></body></html>"
    )
    content = extract_html(page)
    assert content.title == "The Real Title"
    assert texts(page) == ["Hello", "Body text."]


def test_a_page_that_is_all_boilerplate_to_the_heuristics_keeps_its_text() -> None:
    assert texts(b"<html><body><div>Just one short line.</div></body></html>") == [
        "Just one short line."
    ]
