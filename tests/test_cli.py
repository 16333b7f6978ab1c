"""Every service command of the CLI through typer's CliRunner, with fake models through the same
registry as the HTTP tests (``tests.fakes.make_service``): no model files, no network."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ragserve.cli import Shell, app
from ragserve.config import Settings
from ragserve.errors import Unavailable
from ragserve.service import RetrievalService
from tests.fakes import make_service, make_settings


class Cli:
    """Runs commands on one data directory; each command opens (and closes) its own service."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runner = CliRunner()
        self.opened: list[RetrievalService] = []

    def open_service(self, _settings: Settings) -> RetrievalService:
        service = make_service(self.settings)
        self.opened.append(service)
        return service

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(app, list(args), obj=Shell(open_service=self.open_service))
        assert result.exit_code == code, (result.output, result.exception)
        return result


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    yield Cli(make_settings(tmp_path))


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    tree = tmp_path / "notes"
    tree.mkdir()
    (tree / "octopus.md").write_text("# Octopus\n\nAn octopus has three hearts and blue blood.\n")
    (tree / "bread.md").write_text("# Bread\n\nSourdough bread rises with wild yeast.\n")
    (tree / ".hidden.md").write_text("never ingested\n")
    return tree


def test_collections_create_list_show_delete(cli: Cli) -> None:
    assert "collection docs (fake-embedder, 64-d)" in cli("collections", "create", "docs").output
    assert "docs" in cli("collections", "list").output
    shown = json.loads(cli("collections", "show", "docs").output)
    assert (
        shown.items()
        >= {
            "name": "docs",
            "embedder": "fake-embedder",
            "dimension": 64,
            "documents": 0,
            "chunks": 0,
        }.items()
    )
    assert "deleted docs" in cli("collections", "delete", "docs", "--yes").output
    missing = cli("collections", "show", "docs", code=1)
    assert "error:" in missing.output and "docs" in missing.output
    for service in cli.opened:  # every command closed the service it opened
        with pytest.raises(Unavailable, match="closed"):
            service.list_collections()


def test_ingest_then_search(cli: Cli, notes: Path) -> None:
    out = cli("ingest", str(notes), "--collection", "n").output
    assert "n: 2 created, 0 updated, 0 unchanged, 0 failed" in out
    assert "2 created" not in cli("ingest", str(notes), "--collection", "n").output  # unchanged
    found = json.loads(cli("search", "how many hearts", "-c", "n", "--json").output)
    assert found["results"][0]["document_id"].endswith("octopus.md")
    assert found["results"][0]["rank"] == 1 and "total" in found["timings_ms"]
    table = cli("search", "sourdough", "-c", "n", "--mode", "lexical", "--rerank").output
    assert "bread.md" in table and "hits" in table


def test_search_errors_are_one_line_and_a_status(cli: Cli) -> None:
    assert "unknown mode" in cli("search", "q", "-c", "n", "--mode", "fuzzy", code=2).output
    assert "not valid JSON" in cli("search", "q", "-c", "n", "--filter", "{", code=2).output
    missing = cli("search", "q", "-c", "nowhere", code=1)
    assert missing.output.startswith("error:") and "Traceback" not in missing.output


def test_ingest_without_create_refuses_a_missing_collection(cli: Cli, notes: Path) -> None:
    out = cli("ingest", str(notes), "--collection", "n", "--no-create", code=1).output
    assert "error:" in out


def test_eval_on_a_small_beir_dataset(cli: Cli, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    (ds / "qrels").mkdir(parents=True)
    corpus = {"d1": "octopus hearts blood", "d2": "sourdough bread yeast", "d3": "tea leaves"}
    (ds / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in corpus.items())
    )
    queries = {"q1": "octopus hearts", "q2": "bread yeast"}
    (ds / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items())
    )
    (ds / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    out = tmp_path / "eval.json"
    cli("eval", str(ds), "--json", str(out))
    rows = {r["run"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) >= {"lexical", "dense", "hybrid", "hybrid+rerank"}
    assert rows["lexical"]["ndcg@10"] == pytest.approx(1.0)


def test_config_show_masks_secrets(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGSERVE_API_KEYS", '["s3cret-key"]')
    shown = cli("config", "show").output
    assert "s3cret-key" not in shown and "api_keys" in shown


def test_stats_of_a_server_that_is_not_there(cli: Cli) -> None:
    out = cli("stats", "--url", "http://127.0.0.1:9", code=1).output
    assert "cannot reach" in out


def test_a_missing_config_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    out = cli("--config", str(tmp_path / "none.env"), "collections", "list", code=2).output
    assert "does not exist" in " ".join(out.split())


def test_ingest_walks_the_directory_once(
    cli: Cli, notes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ragserve.ingest import sources

    walks: list[Path] = []
    walk = sources.walk_files

    def counted(root: Path, **options: object) -> Iterator[tuple[Path, str]]:
        walks.append(root)
        return walk(root, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(sources, "walk_files", counted)
    out = cli("ingest", str(notes), "--collection", "n").output
    assert "n: 2 created" in out
    assert walks == [notes]  # counted for the progress bar and read from one walk


def test_ingest_of_one_file_and_of_a_missing_path(cli: Cli, notes: Path) -> None:
    out = cli("ingest", str(notes / "bread.md"), "--collection", "n").output
    assert "n: 1 created" in out
    found = json.loads(cli("search", "sourdough", "-c", "n", "--json").output)
    assert found["results"][0]["document_id"] == "bread.md"
    missing = cli("ingest", str(notes / "gone"), "--collection", "other", code=2).output
    assert "does not exist" in " ".join(missing.split())
    assert "other" not in cli("collections", "list").output  # nothing was created for it
