"""The file type registry: a type registered in one place is detected, parsed and walked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ragserve.errors import InvalidInput
from ragserve.ingest.detect import ParseError, UnsupportedType, detect_type
from ragserve.ingest.filetypes import (
    FileType,
    Parsed,
    Signature,
    default_include,
    file_types,
    register_file_type,
    registered,
)
from ragserve.ingest.limits import Limits
from ragserve.ingest.parsers import parse_bytes
from ragserve.ingest.sources import IngestFailure, iter_bytes, iter_directory, walk_files
from ragserve.types import Document, Section
from tests.ingest.helpers import MAX


def _parse_ini(data: bytes, limits: Limits) -> Parsed:
    """A toy parser: ``[section]`` lines become headings' titles, the rest is the text."""
    lines = data.decode().splitlines()
    title = next((line.strip("[]") for line in lines if line.startswith("[")), None)
    text = "\n".join(line for line in lines if not line.startswith("["))
    sections = sum(1 for line in lines if line.startswith("["))
    return Parsed(text, title, [Section(0, len(text))], {"ini_sections": sections})


INI = FileType(
    "ini",
    "text/x-ini",
    (".ini", ".cfg"),
    parse=_parse_ini,
    aliases=("application/x-ini",),
    openings=(b"[settings]",),
)


@pytest.fixture
def ini() -> Iterator[FileType]:
    with registered(INI) as kind:
        yield kind


def test_a_registered_type_is_detected_parsed_and_walked(ini: FileType, tmp_path: Path) -> None:
    body = b"[settings]\nretries = 3\ncolour = blue\n"
    # Detected: by extension, by declared content type, by its opening.
    assert detect_type(body, "app.ini") is ini
    assert detect_type(body, "upload", "application/x-ini; charset=utf-8") is ini
    assert detect_type(body, "upload") is ini
    # Parsed by its parser, with the document's usual metadata.
    doc = parse_bytes(body, "app.cfg", max_bytes=MAX)
    assert doc.text == "retries = 3\ncolour = blue"
    assert doc.title == "settings"
    assert doc.metadata["content_type"] == "text/x-ini"
    assert doc.metadata["ini_sections"] == 1
    (item,) = iter_bytes(body, "upload", "text/x-ini", max_bytes=MAX)
    assert isinstance(item, Document) and item.title == "settings"
    # Included by a folder walk's default patterns, beside the built-in types.
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.ini").write_bytes(body)
    (tmp_path / "notes.txt").write_text("plain notes")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert "**/*.ini" in default_include() and "**/*.cfg" in default_include()
    assert [rel for _, rel in walk_files(tmp_path)] == ["notes.txt", "conf/app.ini"]
    docs = [d for d in iter_directory(tmp_path, max_bytes=MAX) if isinstance(d, Document)]
    assert [d.id for d in docs] == ["notes.txt", "conf/app.ini"]
    assert [d.metadata["content_type"] for d in docs] == ["text/plain", "text/x-ini"]


def test_unregistered_it_is_gone_everywhere(tmp_path: Path) -> None:
    with registered(INI):
        assert INI in file_types()
    assert INI not in file_types()
    assert "**/*.ini" not in default_include()
    with pytest.raises(UnsupportedType, match=r"'\.ini'"):
        detect_type(b"[settings]\n", "app.ini")
    (tmp_path / "app.ini").write_text("[settings]\nx = 1\n")
    assert list(walk_files(tmp_path)) == []


def test_a_binary_type_is_proved_by_its_signature() -> None:
    note = FileType(
        "note",
        "application/x-note",
        (".note",),
        parse=lambda data, limits: Parsed(data[5:].decode(), None, [Section(0, len(data) - 5)]),
        signature=Signature((b"NOTE\x00",), "a NOTE file", "not a NOTE: no NOTE header"),
    )
    with registered(note):
        assert detect_type(b"NOTE\x00hello", "upload") is note  # a NUL, yet not refused as binary
        assert parse_bytes(b"NOTE\x00hello", "x.note", max_bytes=MAX).text == "hello"
        with pytest.raises(ParseError, match="not a NOTE: no NOTE header"):
            detect_type(b"hello", "x.note")
        with pytest.raises(ParseError, match="named as text but the content is a NOTE file"):
            detect_type(b"NOTE\x00hello", "x.txt")
        (failure,) = iter_bytes(b"%PDF-1.7", "x.note", max_bytes=MAX)
        assert isinstance(failure, IngestFailure) and "content is a PDF" in failure.error


def test_names_are_unique() -> None:
    with pytest.raises(InvalidInput, match="already registered"):
        register_file_type(FileType("pdf", "application/x-other", (".other",)))
    with pytest.raises(InvalidInput, match=r"\.md already belong\(s\) to 'markdown'"):
        register_file_type(FileType("mine", "text/x-mine", (".mine", ".md")))
    with pytest.raises(InvalidInput, match="text/html already"):
        register_file_type(FileType("mine", "text/html", (".mine",)))
    with pytest.raises(InvalidInput, match="lower-case"):
        register_file_type(FileType("mine", "text/x-mine", (".MINE",)))
    assert [t.name for t in file_types()] == [
        "text", "markdown", "html", "pdf", "docx", "json", "jsonl",
    ]  # fmt: skip
