"""Damage and a full disk in the embedded store: detected at open or at first use, never
answered with a bare error again and again, never a write into a damaged file.

The real-server side (exit codes, HTTP statuses, ``/readyz``) is in ``test_store_damage_e2e``.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragserve.errors import InsufficientStorage, StoreDamaged, Unavailable
from ragserve.store.sqlite import SqliteStore
from ragserve.store.sqlite import health as sqlite_health
from ragserve.store.sqlite.lexical import COMPONENTS, LexicalIndex, verify_files
from ragserve.types import Chunk, Document

DIM = 8


def put(store: SqliteStore, i: int, chunks: int = 2, words: int = 3) -> None:
    vectors = np.random.default_rng(i).standard_normal((chunks, DIM)).astype(np.float32)
    text = " ".join(f"filler{w}" for w in range(words))
    store.upsert_document(
        "c",
        Document(f"d{i}", ""),
        str(i),
        [Chunk(f"d{i}", j, f"tok{i}x{j} {text}") for j in range(chunks)],
        vectors,
    )


def filled(path: Path, docs: int = 30, words: int = 3) -> SqliteStore:
    store = SqliteStore(path)
    store.create_collection("c", "fake", DIM)
    for i in range(docs):
        put(store, i, words=words)
    return store


def found(store: SqliteStore, i: int) -> str:
    return store.lexical_search("c", f"tok{i}x1", 1)[0].chunk_id


def digest(path: Path) -> str:
    return "".join(
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.parent.glob(path.name + "*"))
    )


# ------------------------------------------------------------------------------ tantivy


@pytest.mark.parametrize("damage", [*(f"delete-{ext}" for ext in COMPONENTS), "flip-idx"])
def test_damaged_tantivy_segment_is_found_at_open_and_rebuilt(tmp_path: Path, damage: str) -> None:
    store = filled(tmp_path)
    assert found(store, 7) == "d7#1"
    store.close()
    kind, ext = damage.split("-")
    victim = sorted((tmp_path / "lexical" / "1").glob(f"*.{ext}"))[0]
    if kind == "delete":
        victim.unlink()  # meta.json still names it
    else:
        data = bytearray(victim.read_bytes())
        data[len(data) // 3] ^= 0xFF  # one byte: only the CRC32 in tantivy's footer sees it
        victim.write_bytes(bytes(data))
    assert verify_files(tmp_path / "lexical" / "1") is not None

    store = SqliteStore(tmp_path)
    try:
        for i in (0, 7, 29):
            assert found(store, i) == f"d{i}#1"
        assert store._lexical.last_load[1] == "rebuilt"
        assert verify_files(tmp_path / "lexical" / "1") is None
    finally:
        store.close()


def test_intact_tantivy_index_is_loaded_not_rebuilt(tmp_path: Path) -> None:
    store = filled(tmp_path)
    store.delete_document("c", "d3")  # a segment with deletes: its .del file is checked too
    assert found(store, 4) == "d4#1"
    store.close()
    assert verify_files(tmp_path / "lexical" / "1") is None
    store = SqliteStore(tmp_path)
    try:
        assert found(store, 4) == "d4#1"
        assert store._lexical.last_load[1] == "loaded"
    finally:
        store.close()


def test_tantivy_failing_at_run_time_falls_back_to_fts5_then_rebuilds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = filled(tmp_path)
    try:
        assert found(store, 5) == "d5#1"
        # Damage under the running process: the open index's postings, overwritten in place.
        for victim in (tmp_path / "lexical" / "1").glob("*.idx"):
            size = victim.stat().st_size
            with victim.open("r+b") as fh:
                fh.write(b"\x07" * (size - 100))
        for _ in range(3):  # every search answers (from FTS5), none raises
            assert found(store, 5) == "d5#1"
        assert 1 not in store._lexical.indexes  # dropped: rebuilt at its next use
        monkeypatch.setattr("ragserve.store.sqlite.store.LEXICAL_RETRY", 0.0)
        store._lexical_retry.clear()
        assert found(store, 6) == "d6#1"
        assert store._lexical.last_load[1] == "rebuilt"
    finally:
        store.close()


def test_tantivy_error_in_search_is_not_a_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = filled(tmp_path)
    calls = []

    def broken(self: LexicalIndex, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise ValueError("Failed to open file for read: 'FileDoesNotExist(...)'")

    try:
        monkeypatch.setattr(LexicalIndex, "search", broken)
        assert found(store, 3) == "d3#1"
        assert found(store, 4) == "d4#1"
        assert len(calls) == 1  # the second search went straight to FTS5 (retry later)
    finally:
        store.close()


# ------------------------------------------------------------------------------ SQLite at open


def test_zeroed_header_refuses_to_open_naming_the_file_and_the_way_back(tmp_path: Path) -> None:
    filled(tmp_path).close()
    db = tmp_path / "ragserve.db"
    with db.open("r+b") as fh:
        fh.write(b"\0" * 100)
    with pytest.raises(StoreDamaged) as caught:
        SqliteStore(tmp_path)
    message = caught.value.message
    assert str(db) in message and "ragserve restore" in message
    assert "ragserve store repair" in message
    # The lock was released: a repaired or restored store can be opened by this process.
    (tmp_path / "ragserve.db").unlink()
    SqliteStore(tmp_path).close()


def test_garbage_mid_file_is_found_by_quick_check_at_open(tmp_path: Path) -> None:
    store = filled(tmp_path, docs=120, words=60)
    store.close()
    db = tmp_path / "ragserve.db"
    size = db.stat().st_size
    assert size > 40 * 4096
    with db.open("r+b") as fh:
        fh.seek((size // 2) // 4096 * 4096)
        fh.write(os.urandom(4096))
    with pytest.raises(StoreDamaged, match=r"ragserve\.db is damaged"):
        SqliteStore(tmp_path)


# ------------------------------------------------------------------------------ SQLite at run time


def corrupt_all_but_schema(db: Path) -> None:
    """4 KB of garbage over every page past the first few (the schema, the collections)."""
    size = db.stat().st_size
    with db.open("r+b") as fh:
        for offset in range(8 * 4096, size, 4096):
            fh.seek(offset)
            fh.write(os.urandom(4096))


def test_damage_found_at_run_time_makes_the_store_read_only(tmp_path: Path) -> None:
    store = filled(tmp_path, docs=120, words=60)
    store.close()
    store = SqliteStore(tmp_path)
    try:
        store.get_collection("c")
        corrupt_all_but_schema(tmp_path / "ragserve.db")
        with pytest.raises(StoreDamaged) as caught:
            for i in range(120):
                store.get_document("c", f"d{i}")
        assert "read-only" in caught.value.message
        assert caught.value.status_code == 503
        problem = store.write_problem()
        assert problem is not None and "ragserve restore" in problem
        before = digest(tmp_path / "ragserve.db")
        for write in (
            lambda: put(store, 500),
            lambda: store.delete_document("c", "d1"),
            lambda: store.create_collection("other", "fake", DIM),
        ):
            with pytest.raises(StoreDamaged, match="read-only"):
                write()
        assert digest(tmp_path / "ragserve.db") == before  # nothing written into it
    finally:
        store.close()


# ------------------------------------------------------------------------------ disk full (fake)


class FullDisk:
    """The writer connection with a disk that fills up on demand (SQLITE_FULL at COMMIT)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.full = False

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.full and sql == "COMMIT":
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorcode = 13  # type: ignore[attr-defined]
            raise exc
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.fixture
def full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SqliteStore, FullDisk]]:
    monkeypatch.setattr(sqlite_health, "PROBE_INTERVAL", 0.0)
    store = filled(tmp_path, docs=5)
    disk = FullDisk(store._writer)
    store._writer = disk  # type: ignore[assignment]
    monkeypatch.setattr(sqlite_health, "has_room", lambda _dir, _size: not disk.full)
    yield store, disk
    disk.full = False
    store.close()


def test_disk_full_is_507_nothing_half_stored_and_recovers_without_restart(
    full_disk: tuple[SqliteStore, FullDisk],
) -> None:
    store, disk = full_disk
    disk.full = True
    with pytest.raises(InsufficientStorage) as caught:
        put(store, 10)
    assert caught.value.status_code == 507 and "full" in caught.value.message
    assert store._writer.in_transaction is False  # rolled back, the next write can start
    assert store.get_document_hash("c", "d10") is None
    assert store.get_collection("c").documents == 5
    assert found(store, 2) == "d2#1"  # reads go on
    problem = store.write_problem()  # no room yet
    assert problem is not None and "full" in problem
    disk.full = False  # space freed
    assert store.write_problem() is None
    put(store, 10)
    assert found(store, 10) == "d10#1"


def test_http_ingest_on_a_full_disk_is_507_with_each_documents_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes import make_service, make_settings, ready_client

    monkeypatch.setattr(sqlite_health, "PROBE_INTERVAL", 0.0)
    service = make_service(make_settings(tmp_path))
    store = service.store
    assert isinstance(store, SqliteStore)
    disk = FullDisk(store._writer)
    store._writer = disk  # type: ignore[assignment]
    monkeypatch.setattr(sqlite_health, "has_room", lambda _dir, _size: not disk.full)
    original = store.upsert_document
    stored: list[str] = []
    filled_once: list[bool] = []

    def upsert(*args: Any, **kwargs: Any) -> Any:
        if len(stored) == 2 and not filled_once:
            filled_once.append(True)
            disk.full = True  # the third document meets a full disk
        outcome = original(*args, **kwargs)
        stored.append(args[1].id)
        return outcome

    monkeypatch.setattr(store, "upsert_document", upsert)
    docs = [{"id": f"d{i}", "text": f"tok{i} about octopus hearts"} for i in range(5)]
    for client in ready_client(service.settings, service):
        assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
        r = client.post("/v1/collections/c/documents", json={"documents": docs})
        assert r.status_code == 507, r.text
        body = r.json()
        assert body["error"]["type"] == "insufficient_storage"
        assert "full" in body["error"]["message"]
        results = body["results"]
        assert [x["id"] for x in results] == [d["id"] for d in docs]
        assert [x["status"] for x in results] == ["created"] * 2 + ["failed"] * 3
        assert stored == ["d0", "d1"]
        for x in results:  # what says created is there, and nothing else
            there = client.get(f"/v1/collections/c/documents/{x['id']}").status_code
            assert there == (200 if x["status"] == "created" else 404)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "full" in ready.json()["reason"]
        search = client.post(
            "/v1/collections/c/search", json={"query": "octopus", "mode": "lexical"}
        )
        assert search.status_code == 200 and search.json()["results"]  # reads go on

        disk.full = False  # space freed: no restart
        assert client.get("/readyz").status_code == 200
        r = client.post("/v1/collections/c/documents", json={"documents": docs})
        assert r.status_code == 200
        assert [x["status"] for x in r.json()["results"]] == ["unchanged"] * 2 + ["created"] * 3


def test_second_opener_of_a_data_dir_is_refused_with_the_reason(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    try:
        with pytest.raises(Unavailable, match="in use by another process"):
            SqliteStore(tmp_path)
    finally:
        store.close()


# ------------------------------------------------------------------------- the clean-close stamp


def test_a_clean_close_skips_quick_check_at_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filled(tmp_path, docs=20, words=20).close()
    assert (tmp_path / sqlite_health.CLEAN_STAMP).exists()
    checked: list[Path] = []
    monkeypatch.setattr(
        "ragserve.store.sqlite.store.check_database", lambda path: checked.append(path)
    )
    store = SqliteStore(tmp_path)
    assert checked == []
    assert not (tmp_path / sqlite_health.CLEAN_STAMP).exists()  # gone while the store is open
    store.close()


def test_a_process_that_dies_with_the_store_open_makes_the_next_open_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filled(tmp_path, docs=20, words=20).close()
    code = (
        "import os, sys\n"
        "from ragserve.store.sqlite import SqliteStore\n"
        "SqliteStore(sys.argv[1])\n"
        "os._exit(0)\n"  # no close, as if killed
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    assert not (tmp_path / sqlite_health.CLEAN_STAMP).exists()
    checked: list[Path] = []
    monkeypatch.setattr(
        "ragserve.store.sqlite.store.check_database", lambda path: checked.append(path)
    )
    SqliteStore(tmp_path).close()
    assert checked == [tmp_path / "ragserve.db"]


def test_a_stamp_that_does_not_match_the_files_is_not_trusted(tmp_path: Path) -> None:
    filled(tmp_path, docs=20, words=20).close()
    stamp = tmp_path / sqlite_health.CLEAN_STAMP
    stamp.write_text('{"ragserve.db": [1, 2, 3]}')
    assert not sqlite_health.take_clean_stamp(tmp_path / "ragserve.db")
    stamp.write_text("not json")
    assert not sqlite_health.take_clean_stamp(tmp_path / "ragserve.db")
    assert not stamp.exists()
