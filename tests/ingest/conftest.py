"""Fixtures of the ingest tests (the file builders live in ``tests/ingest/helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ingest.helpers import HTML_PAGE, MARKDOWN, make_docx, make_pdf


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory with one good file of every type."""
    make_pdf(tmp_path / "paper.pdf", [["Page one text here."], ["Page two text here."]])
    make_docx(tmp_path / "report.docx")
    (tmp_path / "page.html").write_text(HTML_PAGE, encoding="utf-8")
    (tmp_path / "guide.md").write_text(MARKDOWN, encoding="utf-8")
    (tmp_path / "notes.txt").write_text("Plain notes.\n\nSecond paragraph.", encoding="utf-8")
    return tmp_path
