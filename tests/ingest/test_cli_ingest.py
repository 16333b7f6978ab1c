"""`ragserve ingest` end to end with the real default embedder: counts, failures, stats."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragserve.cli import _service, app
from ragserve.search import SearchRequest
from tests.ingest.helpers import write_mixed_tree


@pytest.mark.slow
def test_a_thousand_mixed_files_ten_broken_the_rest_searchable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    broken = write_mixed_tree(tree)
    monkeypatch.setenv("RAGSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    stats_path = tmp_path / "stats.json"
    result = CliRunner().invoke(
        app, ["ingest", str(tree), "--collection", "mixed", "--stats-json", str(stats_path)]
    )
    assert result.exit_code == 1, result.output  # some documents failed
    assert "990 created" in result.output and "10 failed" in result.output
    flat = re.sub(r"\s+", "", result.output)  # the failure table may wrap long paths
    for path in broken:
        assert path.replace("/", "") in flat.replace("/", ""), path
    stats = json.loads(stats_path.read_text())
    assert stats["counts"] == {"created": 990, "updated": 0, "unchanged": 0, "failed": 10}
    assert stats["stages"]["documents"] == 990 and stats["documents_per_s"] > 0

    svc = _service()
    try:
        assert svc.get_collection("mixed").documents == 990
        numbered = [i for i in range(0, 1000, 9) if i % 100 != 37 and i % 20 != 0]
        for i in numbered:  # every such file has its number as a unique word
            for mode in ("lexical", "hybrid"):
                hits = svc.search("mixed", SearchRequest(str(i), top_k=3, mode=mode)).hits
                assert re.search(rf"\b{i}\b", hits[0].text), (i, mode, hits[0].text)
    finally:
        svc.close()


def test_the_cli_ingest_keeps_onnx_threads_spinning_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGSERVE_DATA_DIR", str(tmp_path / "data"))
    cases = ((True, None, "always"), (False, None, "in_run"), (True, "off", "off"))
    for bulk, env, expected in cases:
        if env is None:
            monkeypatch.delenv("RAGSERVE_ONNX_SPINNING", raising=False)
        else:
            monkeypatch.setenv("RAGSERVE_ONNX_SPINNING", env)
        svc = _service(bulk=bulk)
        try:
            assert svc.models.session_config.spinning == expected
        finally:
            svc.close()


@pytest.mark.slow
def test_the_cli_ingest_applies_the_servers_per_document_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.ingest.helpers import make_docx

    tree = tmp_path / "tree"
    tree.mkdir()
    make_docx(tree / "report.docx")
    (tree / "notes.txt").write_text("Plain notes about octopus hearts.", encoding="utf-8")
    monkeypatch.setenv("RAGSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAGSERVE_MAX_EXPANDED_BYTES", "1024")  # the DOCX unpacks to more
    result = CliRunner().invoke(app, ["ingest", str(tree), "--collection", "budgets"])
    assert result.exit_code == 1, result.output
    assert "1 created" in result.output and "1 failed" in result.output
    flat = re.sub(r"[\s│]+", "", result.output)  # the failure table wraps its lines
    assert "report.docx" in flat and "DOCXexpandsto" in flat  # 64 MiB by default: taken
