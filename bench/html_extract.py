"""Main-content extraction from HTML: trafilatura (ragserve's parser) against lighter paths.

    apt-get install python3.11-doc nodejs-doc valgrind   # real pages with navigation chrome
    python -m bench.html_extract [--limit N]

For each page the *gold* text is the page's main element (Sphinx's ``[role=main]``, Node.js's
``#apicontent``; valgrind's DocBook pages: the body without its ``table.nav`` bars, chrome that no
semantic tag marks). Every extractor sees the page after the same pre-cleaning ragserve does
(semantic chrome removed); scores are bag-of-words precision / recall / F1 against the gold text,
the usual measure for boilerplate removal. Prints JSON: medians per page family and extractor.
trafilatura (ragserve's HTML extractor before resiliparse) is compared when it is installed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser

from ragserve.ingest.html import drop_chrome
from ragserve.ingest.parsers import parse_bytes

FAMILIES: dict[str, tuple[str, str | None, str]] = {
    # name: (glob, gold selector (None: body), chrome removed from the gold)
    "python-docs (Sphinx)": ("/usr/share/doc/python3.11/html/library/*.html", "[role=main]", ""),
    "nodejs-docs": ("/usr/share/doc/nodejs/api/*.html", "#apicontent", ""),
    "valgrind (DocBook)": ("/usr/share/doc/valgrind/html/*.html", None, "table.nav"),
}
_WORD = re.compile(r"\w+")


def words(text: str) -> Counter[str]:
    return Counter(w.lower() for w in _WORD.findall(text))


def gold_text(html: bytes, selector: str | None, chrome: str) -> str:
    tree = LexborHTMLParser(html)
    for node in tree.css("script, style"):
        node.decompose()
    if chrome:
        for node in tree.css(chrome):
            node.decompose()
    node = tree.css_first(selector) if selector else tree.body
    return node.text(separator=" ") if node is not None else ""


def precleaned(html: bytes) -> str:
    tree = LexborHTMLParser(html)
    drop_chrome(tree)
    return tree.html or ""


def ragserve(html: bytes) -> str:
    doc = parse_bytes(html, "page.html", max_bytes=1 << 26)
    return " ".join([doc.title or "", doc.text])


def trafilatura(html: bytes) -> str:
    import trafilatura as t

    return str(t.extract(precleaned(html), output_format="markdown", favor_recall=True) or "")


def resiliparse(html: bytes) -> str:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    return str(extract_plain_text(HTMLTree.parse(precleaned(html)), main_content=True))


def body_text(html: bytes) -> str:
    tree = LexborHTMLParser(precleaned(html))
    return tree.body.text(separator=" ") if tree.body is not None else ""


EXTRACTORS: dict[str, Callable[[bytes], str]] = {
    "ragserve (selectolax + resiliparse)": ragserve,
    "trafilatura (if installed)": trafilatura,
    "resiliparse main_content": resiliparse,
    "body text (no extraction)": body_text,
}


def prf(candidate: Counter[str], gold: Counter[str]) -> tuple[float, float, float]:
    hit = sum((candidate & gold).values())
    p = hit / max(1, sum(candidate.values()))
    r = hit / max(1, sum(gold.values()))
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=60, help="pages per family")
    args = ap.parse_args()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for family, (pattern, selector, chrome) in FAMILIES.items():
        root = Path(pattern).parent
        pages = sorted(root.glob(Path(pattern).name))[: args.limit]
        if not pages:
            continue
        scores: dict[str, list[tuple[float, float, float, float]]] = {e: [] for e in EXTRACTORS}
        for page in pages:
            html = page.read_bytes()
            gold = words(gold_text(html, selector, chrome))
            if sum(gold.values()) < 50:
                continue
            for name, extract in EXTRACTORS.items():
                started = time.perf_counter()
                try:
                    text = extract(html)
                except ImportError:  # trafilatura is no dependency: pip install it to compare
                    continue
                ms = (time.perf_counter() - started) * 1000
                scores[name].append((*prf(words(text), gold), ms))
        out[f"{family}, {len(scores[next(iter(EXTRACTORS))])} pages"] = {
            name: {
                key: round(statistics.median(v[i] for v in vals), 3)
                for i, key in enumerate(("precision", "recall", "f1", "ms_per_page"))
            }
            for name, vals in scores.items()
            if vals
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
