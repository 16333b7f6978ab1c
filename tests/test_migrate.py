"""`ragserve migrate`: sqlite -> postgres -> sqlite copies everything (no re-embedding), verifies
counts, is re-runnable, and refuses a target whose counts then disagree."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from ragserve.cli import app
from ragserve.config import Settings
from ragserve.errors import InvalidInput
from ragserve.store.base import BACKENDS, Backend, Store
from ragserve.store.migrate import MigrationMismatch, migrate, open_endpoint
from ragserve.store.sqlite import SqliteStore
from ragserve.types import Chunk, Document
from tests.fakes import pgserver_module, random_unit

pytestmark = pytest.mark.postgres
DIM = 8


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Any]:
    pgserver = pgserver_module()
    data = Path(tempfile.mkdtemp(prefix="ragserve-pg-"))  # not pruned by concurrent pytest runs
    server = pgserver.get_server(data, cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def dsn(pg_server: Any) -> str:
    import psycopg
    from psycopg import sql

    name = f"m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return str(pg_server.get_uri(name))


def fill(store: Store) -> None:
    store.create_collection("papers", "fake", DIM)
    store.create_collection("notes", "other", DIM)
    for d in range(25):
        n = 1 + d % 4
        chunks = [
            Chunk(f"p{d}", i, f"paper {d} part {i} gene protein", i * 10, i * 10 + 9, {"i": i})
            for i in range(n)
        ]
        meta = {"year": 2000 + d, "tags": ["a", "b"][: d % 3], "nested": {"x": d / 3}}
        doc = Document(f"p{d}", "", title=f"Paper {d}", metadata=meta)
        store.upsert_document("papers", doc, f"hash{d}", chunks, random_unit(n, DIM, seed=d))
    store.upsert_document(
        "notes", Document("n1", "", title=None), "h", [], np.zeros((0, DIM), np.float32)
    )


def snapshot(store: Store) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for info in store.list_collections():
        docs = {}
        for doc, vectors in store.export_documents(info.name):
            docs[doc.id] = (
                doc.title,
                doc.metadata,
                doc.content_hash,
                [(c.index, c.text, c.start, c.end, c.metadata) for c in doc.chunks],
                vectors.tobytes(),
            )
        out[info.name] = (info.embedder, info.dimension, info.documents, info.chunks, docs)
    return out


def test_round_trip_sqlite_postgres_sqlite(tmp_path: Path, dsn: str) -> None:
    src = SqliteStore(tmp_path / "a")
    fill(src)
    settings = Settings(data_dir=tmp_path / "unused")
    pg = open_endpoint(f"postgres:{dsn}", settings)
    back = open_endpoint(f"sqlite:{tmp_path / 'b'}", settings)
    try:
        reports = migrate(src, pg)
        assert {(r.name, r.documents, r.copied, r.skipped) for r in reports} == {
            ("papers", 25, 25, 0),
            ("notes", 1, 1, 0),
        }
        migrate(pg, back)
        expected = snapshot(src)
        assert snapshot(pg) == expected  # vectors are byte-identical float32
        assert snapshot(back) == expected
        q = random_unit(1, DIM, seed=7)[0]
        ids = [h.chunk_id for h in src.dense_search("papers", q, 10)]
        assert [h.chunk_id for h in pg.dense_search("papers", q, 10)] == ids
        assert [h.chunk_id for h in back.dense_search("papers", q, 10)] == ids
        # Re-running copies nothing; a target that then disagrees is reported.
        assert [r.copied for r in migrate(src, pg)] == [0, 0]
        pg.upsert_document(
            "papers", Document("extra", ""), "x", [Chunk("extra", 0, "x")], random_unit(1, DIM)
        )
        with pytest.raises(MigrationMismatch, match="papers"):
            migrate(src, pg, ["papers"])
    finally:
        for s in (src, pg, back):
            s.close()


def test_cli_migrate(tmp_path: Path, dsn: str) -> None:
    src = SqliteStore(tmp_path / "a")
    fill(src)
    src.close()
    result = CliRunner().invoke(
        app, ["migrate", "--from", f"sqlite:{tmp_path / 'a'}", "--to", f"postgres:{dsn}"]
    )
    assert result.exit_code == 0, result.output
    assert "papers: 25 documents" in result.output
    result = CliRunner().invoke(
        app, ["migrate", "--from", f"postgres:{dsn}", "--to", "mysql:x", "--collection", "papers"]
    )
    assert result.exit_code == 1


@pytest.mark.parametrize("spec", ["sqlite", "sqlite:", "mysql:x", "postgres"])
def test_bad_endpoint_is_rejected(spec: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="postgres:DSN or sqlite:PATH"):
        open_endpoint(spec, Settings(data_dir=tmp_path))


def test_endpoints_open_through_the_backend_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered backend is an endpoint kind: its factory gets the caller's settings with the
    endpoint's setting (validated: ``~`` expanded) and ``store`` set to its name."""
    seen: list[Settings] = []

    def factory(settings: Settings) -> Store:
        seen.append(settings)
        return SqliteStore(settings.data_dir)

    monkeypatch.setitem(BACKENDS, "mine", Backend(factory, "data_dir", "PATH"))
    monkeypatch.setenv("HOME", str(tmp_path))
    base = Settings(data_dir=tmp_path / "base", exact_search_below=7)
    opened = open_endpoint("mine:~/there", base)
    opened.close()
    assert seen[0].store == "mine"
    assert seen[0].data_dir == tmp_path / "there"
    assert seen[0].exact_search_below == 7
    assert base.store == "sqlite" and base.data_dir == tmp_path / "base"
    with pytest.raises(InvalidInput, match="mine:PATH or postgres:DSN or sqlite:PATH"):
        open_endpoint("nosuch:x", base)
