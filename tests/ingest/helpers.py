"""Builders of small real files (PDF, DOCX, HTML, Markdown, JSONL) made at test time."""

from __future__ import annotations

import json
import re
from pathlib import Path

MAX = 1_000_000


def ws_spans(text: str) -> list[tuple[int, int]]:
    """A fake tokenizer: every run of non-space characters is one token."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def make_pdf(path: Path, pages: list[list[str]], title: str | None = "Test PDF") -> Path:
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=letter)
    if title:
        c.setTitle(title)
    for lines in pages:
        y = 720
        for line in lines:
            c.drawString(72, y, line)
            y -= 18
        c.showPage()
    c.save()
    return path


def encrypt_pdf(src: Path, dst: Path, user_password: str, owner_password: str = "owner") -> Path:
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=src)
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="RC4-128")
    writer.write(dst)
    return dst


def make_docx(path: Path) -> Path:
    import docx

    d = docx.Document()
    d.core_properties.title = "Quarterly Report"
    d.add_heading("Quarterly Report", 0)
    d.add_heading("Introduction", 1)
    d.add_paragraph("The introduction explains the purpose. It has two sentences.")
    d.add_heading("Scope", 2)
    d.add_paragraph("The scope covers three regions.")
    d.add_heading("Results", 1)
    d.add_paragraph("Revenue grew by ten percent.")
    d.add_paragraph("first bullet", style="List Bullet")
    d.add_paragraph("second bullet", style="List Bullet")
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "region"
    table.cell(0, 1).text = "growth"
    table.cell(1, 0).text = "north"
    table.cell(1, 1).text = "12%"
    d.save(str(path))
    return path


ARTICLE = (
    "Retrieval augmented generation grounds a language model in documents that a search "
    "engine finds for each question. "
)
HTML_PAGE = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Grounding models | Example Blog</title></head>
<body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/products">Products</a></li>
<li><a href="/pricing">Pricing and plans</a></li>
<li><a href="/contact">Contact sales</a></li></ul></nav>
<header><div class="banner">Subscribe to our newsletter for weekly updates</div></header>
<main><article>
<h1>Grounding models</h1>
<p>{ARTICLE * 4}</p>
<h2>How retrieval works</h2>
<p>Chunks of each document are embedded as vectors. {ARTICLE * 3}</p>
<p>A second paragraph explains hybrid search with <b>BM25</b> and dense vectors together.</p>
</article></main>
<aside>Related posts: ten tips for productivity</aside>
<footer><p>Copyright 2026 Example Corp. All rights reserved. Privacy policy.</p></footer>
</body></html>
"""

MARKDOWN = """---
title: Front Matter Title
---
# Guide

Intro paragraph with **bold** and a [link](https://example.com).

## Install

Run the installer. Then restart.

- first step
- second step

### Linux

Use the package manager.

## Usage

```
ragserve serve
```

| name | value |
|------|-------|
| a    | 1     |
"""


def write_mixed_tree(root: Path) -> set[str]:
    """1,000 small files in 7 folders (text, Markdown, HTML, JSONL, PDF), ten of them broken.

    Returns the broken ones' paths relative to ``root``.
    """
    pdf = make_pdf(root / "template.pdf", [["A tiny PDF page."]]).read_bytes()
    (root / "template.pdf").unlink()
    broken: set[str] = set()
    for i in range(1000):
        sub = root / f"d{i % 7}"
        sub.mkdir(exist_ok=True)
        kind = {0: 4, 1: 2}.get(i % 20, i % 2)  # 5% PDF, 5% HTML, the rest text / Markdown
        kind = 3 if i % 20 in (2, 3, 4) else kind  # and 15% JSONL
        name, data = {
            0: (f"f{i}.txt", f"Text file {i}.".encode()),
            1: (f"f{i}.md", f"# Heading {i}\n\nBody {i}.".encode()),
            2: (f"f{i}.html", f"<html><body><p>Page {i} body text.</p></body></html>".encode()),
            3: (f"f{i}.jsonl", json.dumps({"id": f"rec{i}", "text": f"record {i}"}).encode()),
            4: (f"f{i}.pdf", pdf),
        }[kind]
        if i % 100 == 37:  # ten broken ones, of several kinds
            name, data = [
                (f"f{i}.txt", b"\x00\x01binary\x00"),
                (f"f{i}.pdf", pdf[:200]),
                (f"f{i}.md", b"caf\xe9"),
                (f"f{i}.jsonl", b'{"id": "x"}'),
                (f"f{i}.txt", b""),
            ][(i // 100) % 5]
            broken.add(f"d{i % 7}/{name}")
        (sub / name).write_bytes(data)
    return broken
