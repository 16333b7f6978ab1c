"""Sources stream documents and report failures as values, one per bad item."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Iterable
from pathlib import Path

from ragserve.ingest.sources import (
    DEFAULT_EXCLUDE,
    IngestFailure,
    Item,
    glob_regex,
    iter_bytes,
    iter_directory,
    iter_file,
    iter_path,
    iter_records,
    iter_stream,
)
from ragserve.types import Document
from tests.ingest.helpers import MAX, write_mixed_tree


def split(items: Iterable[Item]) -> tuple[list[Document], list[IngestFailure]]:
    docs: list[Document] = []
    fails: list[IngestFailure] = []
    for item in items:
        (docs if isinstance(item, Document) else fails).append(item)  # type: ignore[arg-type]
    return docs, fails


def test_records_with_a_bad_one() -> None:
    records = [{"id": "a", "text": "one"}, {"id": "b"}, {"id": 3, "text": "three", "title": "T"}]
    docs, fails = split(iter_records(records, max_bytes=MAX))
    assert [d.id for d in docs] == ["a", "3"]
    assert fails == [IngestFailure("records[1]", "record 'b' has no 'text'", "parse_error")]


def test_jsonl_file_with_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "alpha", "metadata": {"lang": "en"}}),
        "",
        "{not json",
        json.dumps({"id": "c", "text": 5}),
        json.dumps({"text": "no id"}),
        json.dumps({"id": "big", "text": "x" * 500}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs, fails = split(iter_file(path, max_bytes=200, source="data.jsonl"))
    assert [d.id for d in docs] == ["a", "data.jsonl#5"]
    assert docs[0].metadata == {"lang": "en"}
    assert [(f.source, f.error_type) for f in fails] == [
        ("data.jsonl:3", "parse_error"),
        ("data.jsonl:4", "parse_error"),
        ("data.jsonl:6", "payload_too_large"),
    ]
    assert fails[0].error.startswith("invalid JSON on line 3, column 2")
    assert fails[1].error == "record 'c': 'text' must be a string, got a number"
    assert fails[2].error == "line 6 is over the limit of 200 bytes (max_document_bytes)"


def test_jsonl_invalid_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    docs, fails = split(iter_file(path, max_bytes=MAX, source="d.jsonl"))
    assert [d.id for d in docs] == ["a"]
    assert fails == [IngestFailure("d.jsonl:2", "invalid UTF-8 at byte 24 of line 2")]


def test_big_jsonl_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    line = json.dumps({"id": "x", "text": "word " * 400}) + "\n"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(5_000):  # ~10 MB
            fh.write(line.replace('"x"', f'"{i}"'))
    tracemalloc.start()
    count = 0
    for item in iter_file(path, max_bytes=MAX):
        assert isinstance(item, Document)
        count += 1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 5_000
    assert peak < 2_000_000, peak


def test_over_long_line_is_skipped_without_being_held(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "huge", "text": "y" * 5_000_000}) + "\n")
        fh.write(json.dumps({"id": "after", "text": "fine"}) + "\n")
    tracemalloc.start()
    docs, fails = split(iter_file(path, max_bytes=10_000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [d.id for d in docs] == ["after"] and fails[0].error_type == "payload_too_large"
    assert peak < 1_000_000, peak


def test_json_array_streams_records_and_reports_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text('[{"id": "a", "text": "one"}, {"id": "b", "text": 2}, {"text": "three"}, {"id"')
    docs, fails = split(iter_file(path, max_bytes=MAX, source="arr.json"))
    assert [d.id for d in docs] == ["a", "arr.json#2"]
    assert fails[0] == IngestFailure(
        "arr.json[1]", "record 'b': 'text' must be a string, got a number"
    )
    assert fails[1].source == "arr.json"
    assert fails[1].error.startswith("invalid JSON after 3 record(s); the rest is skipped")


def test_json_single_object_file(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text('{"text": "only one", "title": "One"}')
    (doc,) = iter_file(path, max_bytes=MAX, source="one.json", doc_id="one")
    assert isinstance(doc, Document) and (doc.id, doc.title) == ("one", "One")


def test_uploads() -> None:
    jsonl = b'{"id": "1", "text": "a"}\n{"id": "2"}\n'
    docs, fails = split(iter_bytes(jsonl, "up.jsonl", max_bytes=MAX))
    assert [d.id for d in docs] == ["1"] and fails[0].source == "up.jsonl:2"
    docs, fails = split(iter_bytes(b"# Title\n\nBody.", "n.md", "text/markdown", max_bytes=MAX))
    assert docs[0].title == "Title" and docs[0].id == "n.md" and not fails
    docs, fails = split(iter_bytes(b"\x00\x01\x02", "x.txt", max_bytes=MAX))
    assert not docs and fails == [IngestFailure("x.txt", "binary content (not text): refused")]
    docs, fails = split(iter_bytes(b"x", "a.zip", max_bytes=MAX))
    assert fails[0].error_type == "unsupported_type"


def test_stdin_jsonl_and_text() -> None:
    stream = io.BytesIO(b'\n{"id": "s1", "text": "from stdin"}\n{"bad": 1}\n')
    docs, fails = split(iter_stream(stream, max_bytes=MAX))
    assert [d.id for d in docs] == ["s1"] and fails[0].source == "<stdin>:3"
    (doc,) = iter_stream(io.BytesIO(b"just some text\n"), max_bytes=MAX, doc_id="t")
    assert isinstance(doc, Document) and (doc.id, doc.text) == ("t", "just some text\n")
    (fail,) = iter_stream(io.BytesIO(b"x" * 50), max_bytes=10)
    assert isinstance(fail, IngestFailure) and fail.error_type == "payload_too_large"
    docs, _ = split(iter_stream(io.BytesIO(b'[{"id": "j", "text": "arr"}]'), max_bytes=MAX))
    assert [d.id for d in docs] == ["j"]


def test_stdin_jsonl_across_the_sniffed_head() -> None:
    lines = [json.dumps({"id": f"r{i}", "text": f"record number {i}"}) for i in range(3000)]
    stream = io.BytesIO(("\n".join(lines) + "\n").encode())
    docs, fails = split(iter_stream(stream, max_bytes=100))
    assert not fails and [d.id for d in docs] == [f"r{i}" for i in range(3000)]
    big = io.BytesIO(b'{"id": "a", "text": "' + b"z" * 500 + b'"}\n{"id": "b", "text": "ok"}\n')
    docs, fails = split(iter_stream(big, max_bytes=100))
    assert [d.id for d in docs] == ["b"] and fails[0].source == "<stdin>:1"


def test_globs() -> None:
    assert glob_regex("**/*.md").match("a/b/c.md") and glob_regex("**/*.md").match("c.md")
    assert not glob_regex("*.md").match("a/c.md")
    assert glob_regex("docs/**").match("docs/x/y.txt")
    assert glob_regex("**/.*").match("a/.hidden") and not glob_regex("**/.*").match("a/b.txt")
    assert glob_regex("f[0-9].txt").match("f1.txt") and not glob_regex("f[!0-9].txt").match(
        "f1.txt"
    )


def test_directory_include_exclude_ids_and_order(files: Path) -> None:
    (files / "sub").mkdir()
    (files / "sub" / "b.txt").write_text("in a sub directory")
    (files / ".git").mkdir()
    (files / ".git" / "config.txt").write_text("hidden")
    (files / "image.png").write_bytes(b"\x89PNG")
    docs, fails = split(iter_directory(files, max_bytes=MAX))
    assert not fails
    assert [d.id for d in docs] == [
        "guide.md", "notes.txt", "page.html", "paper.pdf", "report.docx", "sub/b.txt",
    ]  # fmt: skip
    assert docs[-1].metadata["source"] == "sub/b.txt"
    docs, _ = split(
        iter_directory(
            files,
            max_bytes=MAX,
            include=["**/*.txt"],
            exclude=["sub/**", *DEFAULT_EXCLUDE],
            id_prefix="kb:",
        )
    )
    assert [d.id for d in docs] == ["kb:notes.txt"]
    docs, fails = split(iter_directory(files, max_bytes=MAX, include=["**/*"], ids="absolute"))
    assert [Path(f.source).name for f in fails] == ["image.png"]
    assert all(Path(d.id).is_absolute() for d in docs)
    (doc,) = iter_path(files / "notes.txt", max_bytes=MAX)
    assert isinstance(doc, Document) and doc.id == "notes.txt"


def test_directory_of_a_thousand_files_with_ten_broken(tmp_path: Path) -> None:
    broken = write_mixed_tree(tmp_path)
    items = list(iter_directory(tmp_path, max_bytes=MAX))
    docs, fails = split(items)
    assert len(docs) == 990 and len(fails) == 10
    assert {f.source.split(":")[0] for f in fails} == broken
    again = [
        i.id if isinstance(i, Document) else i.source
        for i in iter_directory(tmp_path, max_bytes=MAX)
    ]
    assert again == [i.id if isinstance(i, Document) else i.source for i in items]  # deterministic
