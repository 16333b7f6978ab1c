"""``ragserve search`` with --explain, --highlight, --neighbors and --offset (real models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragserve.cli import app


def test_cli_search_shows_explain_highlights_context_and_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAGSERVE_CHUNK_TOKENS", "16")
    monkeypatch.setenv("RAGSERVE_CHUNK_OVERLAP", "4")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tree = tmp_path / "notes"
    tree.mkdir()
    (tree / "octopus.md").write_text(
        "# Octopus\n\nAn octopus has three hearts and blue blood. Two hearts pump blood to the "
        "gills, one to the rest of the body.\n\n## Arms\n\nEach of its eight arms can taste "
        "what it touches, with hundreds of suckers on every arm.\n"
    )
    (tree / "bread.md").write_text("# Bread\n\nSourdough bread rises with wild yeast.\n")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(tree), "--collection", "n"]).exit_code == 0
    args = ["search", "how many hearts", "--collection", "n", "--top-k", "2"]
    out = runner.invoke(app, [*args, "--json", "--explain", "--highlight", "--neighbors", "1"])
    assert out.exit_code == 0, out.output
    body = json.loads(out.output)
    first = body["results"][0]
    assert first["document_id"].endswith("octopus.md")
    assert {"dense", "lexical", "fused"} <= set(first["explain"])
    assert body["explain"]["fusion"]["method"] and body["next_offset"] == 2
    passage = first["highlights"][0]
    assert "hearts" in [passage["text"][s:e] for s, e in passage["matches"]]
    assert first["context"]["first_chunk"] <= int(first["chunk_id"].rsplit("#", 1)[1])
    page2 = json.loads(runner.invoke(app, [*args, "--json", "--offset", "2"]).output)
    assert [h["rank"] for h in page2["results"]] == [3, 4][: len(page2["results"])]
    assert {h["chunk_id"] for h in page2["results"]}.isdisjoint(
        h["chunk_id"] for h in body["results"]
    )
    table = runner.invoke(app, [*args, "--explain", "--highlight"])
    assert table.exit_code == 0 and "fused #1" in table.output, table.output
