"""``ragserve backup`` / ``restore`` / ``store repair`` of the embedded store."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ragserve.cli import app
from ragserve.errors import Conflict, InvalidInput, Unavailable
from ragserve.jobs import Job, JobStore
from ragserve.keys import KeyStore, Role
from ragserve.store.sqlite import SqliteStore
from ragserve.store.sqlite.backup import backup, repair, restore
from tests.store.test_store_damage import DIM, filled, put
from tests.store.test_store_durability import Acks, read_acks, start_writer, vectors

QUERIES = ["tok3x1", "filler2 tok7x0", "tok11x1 filler0", "tok40x0"]


def snapshot(store: SqliteStore) -> dict[str, object]:
    """Everything a client can see of collection ``c``: documents, counts, search results."""
    info = store.get_collection("c")
    ids = [r[0] for r in store._reader().execute("SELECT doc_id FROM documents ORDER BY doc_id")]
    rng = np.random.default_rng(0)
    probes = rng.standard_normal((5, DIM)).astype(np.float32)
    return {
        "counts": (info.documents, info.chunks),
        "documents": [store.get_document("c", i) for i in ids],
        "lexical": [store.lexical_search("c", q, 5) for q in QUERIES],
        "dense": [store.dense_search("c", v, 5) for v in probes],
    }


def test_backup_while_open_restores_an_equal_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = SqliteStore(data, exact_search_below=20)  # an HNSW index (and its manifest) too
    store.create_collection("c", "fake", DIM)
    for i in range(60):
        put(store, i)
    store.delete_document("c", "d5")
    store.flush()
    try:
        before = snapshot(store)
        info = backup(data, tmp_path / "backup")  # the store is open: its lock is held
    finally:
        store.close()
    assert info.collections == {"c": {"documents": 59, "chunks": 118}}
    assert (tmp_path / "backup" / "ann").is_dir() and (tmp_path / "backup" / "lexical").is_dir()

    restore(tmp_path / "backup", tmp_path / "restored")
    restored = SqliteStore(tmp_path / "restored", exact_search_below=20)
    try:
        assert snapshot(restored) == before
        assert restored._keeper.last_load[1] == "loaded"  # the copied index passed its checks
        assert restored._lexical.last_load[1] == "loaded"
    finally:
        restored.close()


def test_restore_refuses_a_store_unless_forced_and_keeps_the_replaced_files(
    tmp_path: Path,
) -> None:
    filled(tmp_path / "a", docs=3).close()
    filled(tmp_path / "b", docs=7).close()
    backup(tmp_path / "a", tmp_path / "backup")
    with pytest.raises(Conflict, match="--force"):
        restore(tmp_path / "backup", tmp_path / "b")
    _, aside = restore(tmp_path / "backup", tmp_path / "b", force=True)
    assert aside is not None and (aside / "ragserve.db").is_file()
    store = SqliteStore(tmp_path / "b")
    try:
        assert store.get_collection("c").documents == 3
    finally:
        store.close()


def test_restore_refuses_a_data_dir_a_server_has_open(tmp_path: Path) -> None:
    filled(tmp_path / "a", docs=3).close()
    backup(tmp_path / "a", tmp_path / "backup")
    store = SqliteStore(tmp_path / "b")
    try:
        with pytest.raises(Unavailable, match="in use"):
            restore(tmp_path / "backup", tmp_path / "b", force=True)
    finally:
        store.close()


def test_a_damaged_backup_is_refused(tmp_path: Path) -> None:
    filled(tmp_path / "a", docs=3).close()
    backup(tmp_path / "a", tmp_path / "backup")
    db = tmp_path / "backup" / "ragserve.db"
    data = bytearray(db.read_bytes())
    data[len(data) // 2] ^= 1
    db.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="sha256"):
        restore(tmp_path / "backup", tmp_path / "b")
    assert not (tmp_path / "b" / "ragserve.db").exists()


def test_backup_during_ingest_holds_every_write_acknowledged_before_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = start_writer(data)
    assert proc.stdout is not None
    acked: Acks = {}
    try:
        read_acks(proc.stdout, acked, until=150)
        info = backup(data, tmp_path / "backup")  # the writer goes on meanwhile
        assert proc.poll() is None
        later = sum(1 for _ in zip(range(20), proc.stdout, strict=False))
        assert later == 20  # the writer was not held up by the backup
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
    assert info.collections["c"]["documents"] >= len(acked)

    restore(tmp_path / "backup", tmp_path / "restored")
    store = SqliteStore(tmp_path / "restored", exact_search_below=60)
    try:
        # Every document acknowledged before the backup began: whole and searchable in every
        # mode (the helper allows for writes acknowledged after; here there are many).
        check_after_restart_subset(store, acked)
    finally:
        store.close()


def check_after_restart_subset(store: SqliteStore, acked: dict[str, tuple[int, int]]) -> None:
    """Every document of ``acked`` is there, whole and searchable in both modes; one replaced
    by a write made after it was acknowledged (and before the backup) is whole too."""
    for doc_id, (seed, n) in acked.items():
        doc = store.get_document("c", doc_id)
        if doc.content_hash != str(seed):  # replaced later: 2 chunks of a later seed
            assert int(doc.content_hash) >= 100_000 and len(doc.chunks) == 2
            continue
        assert [c.text for c in doc.chunks] == [f"tok{seed}x{j} shared words" for j in range(n)]
        v = vectors(seed, n)
        for j in range(n):
            assert store.dense_search("c", v[j], 1)[0].chunk_id == f"{doc_id}#{j}"
            assert store.lexical_search("c", f"tok{seed}x{j}", 1)[0].chunk_id == f"{doc_id}#{j}"


# ------------------------------------------------------------------------------ repair


def test_repair_salvages_whole_documents_of_a_damaged_file(tmp_path: Path) -> None:
    filled(tmp_path, docs=150, words=60).close()
    db = tmp_path / "ragserve.db"
    size = db.stat().st_size
    with db.open("r+b") as fh:  # two pages in the middle
        fh.seek((size // 2) // 4096 * 4096)
        fh.write(os.urandom(2 * 4096))
    with pytest.raises(Unavailable):
        SqliteStore(tmp_path)
    report = repair(tmp_path)
    assert Path(str(report["damaged_files_moved_to"]), "ragserve.db").is_file()
    store = SqliteStore(tmp_path)
    try:
        info = store.get_collection("c")
        assert 0 < info.documents < 150
        for i in range(150):
            if store.get_document_hash("c", f"d{i}") is None:
                continue
            doc = store.get_document("c", f"d{i}")
            assert len(doc.chunks) == 2  # whole, or absent
            assert store.lexical_search("c", f"tok{i}x1", 1)[0].chunk_id == f"d{i}#1"
        put(store, 1000)  # writable again
    finally:
        store.close()


def test_repair_of_an_unreadable_file_says_restore_and_changes_nothing(tmp_path: Path) -> None:
    filled(tmp_path, docs=3).close()
    with (tmp_path / "ragserve.db").open("r+b") as fh:
        fh.write(b"\0" * 100)
    with pytest.raises(Unavailable, match="restore it from a backup"):
        repair(tmp_path)
    assert (tmp_path / "ragserve.db").read_bytes()[:16] == b"\0" * 16


# ------------------------------------------------------------------------------ CLI


@contextmanager
def control_filled(data: Path) -> Iterator[tuple[str, str]]:
    """A store, a read key scoped to ``c``, a revoked key and a running job with an error:
    (the read key, the job's id), the key and job stores open meanwhile (a server's are)."""
    filled(data, docs=3).close()
    keys = KeyStore(data)
    key, _ = keys.create("reader", Role.READ, ["c"])
    keys.revoke(keys.create("old", Role.ADMIN)[1].id)
    job = Job("job1", "c", total=10, state="running", started_at=1.0)
    job.counts["done"] = job.counts["failed"] = 1
    job.errors.append(("bad", "not UTF-8"))
    jobs = JobStore(data)
    jobs.save(job, run="run1")
    try:
        yield key, job.id
    finally:
        keys.close()
        jobs.close()


def test_backup_holds_the_control_database_and_restore_brings_it_back(tmp_path: Path) -> None:
    with control_filled(tmp_path / "data") as (key, job_id):
        info = backup(tmp_path / "data", tmp_path / "backup")  # online: the control db is open
    assert info.control == {"api_keys": 2, "jobs": 1} and info.control_sha256
    assert not (tmp_path / "backup" / "control.db-wal").exists()  # one self-contained file

    restore(tmp_path / "backup", tmp_path / "fresh")
    keys = KeyStore(tmp_path / "fresh")
    jobs = JobStore(tmp_path / "fresh")
    try:
        principal = keys.verify(key)
        assert principal is not None and principal.role == Role.READ
        assert principal.collections == frozenset({"c"})
        assert [k.name for k in keys.list(revoked=True)] == ["reader", "old"]
        assert [k.name for k in keys.list()] == ["reader"]
        job = jobs.load(job_id, run="run2")  # a new server run: it was interrupted
        assert job is not None and job.state == "interrupted"
        assert (job.counts["done"], job.errors) == (1, [("bad", "not UTF-8")])
    finally:
        keys.close()
        jobs.close()


def test_a_damaged_control_copy_is_refused(tmp_path: Path) -> None:
    with control_filled(tmp_path / "data"):
        backup(tmp_path / "data", tmp_path / "backup")
    db = tmp_path / "backup" / "control.db"
    db.write_bytes(db.read_bytes()[:-1] + b"x")
    with pytest.raises(InvalidInput, match=r"control\.db does not match"):
        restore(tmp_path / "backup", tmp_path / "b")
    assert not (tmp_path / "b" / "ragserve.db").exists()


def test_restore_moves_a_control_database_aside_only_when_forced(tmp_path: Path) -> None:
    with control_filled(tmp_path / "data") as (key, _):
        backup(tmp_path / "data", tmp_path / "backup")
    other = KeyStore(tmp_path / "b")
    other_key, _ = other.create("theirs", Role.ADMIN)
    other.close()
    with pytest.raises(Conflict, match=r"control\.db"):
        restore(tmp_path / "backup", tmp_path / "b")
    _, aside = restore(tmp_path / "backup", tmp_path / "b", force=True)
    assert aside is not None and (aside / "control.db").is_file()
    keys = KeyStore(tmp_path / "b")
    try:
        assert keys.verify(key) is not None and keys.verify(other_key) is None
    finally:
        keys.close()


def test_a_store_only_backup_keeps_the_directory_control_database(tmp_path: Path) -> None:
    """Format 1 (before control databases were backed up) is still restored."""
    filled(tmp_path / "a", docs=2).close()
    backup(tmp_path / "a", tmp_path / "backup")
    manifest = tmp_path / "backup" / "backup.json"
    raw = json.loads(manifest.read_text())
    assert raw["control_sha256"] is None  # "a" has no control database
    for name in ("control_sha256", "control_bytes", "control"):
        del raw[name]
    manifest.write_text(json.dumps({**raw, "format": 1}))
    keys = KeyStore(tmp_path / "b")
    key, _ = keys.create("mine", Role.READ)
    keys.close()
    restore(tmp_path / "backup", tmp_path / "b")
    keys = KeyStore(tmp_path / "b")
    try:
        assert keys.verify(key) is not None
    finally:
        keys.close()


def test_cli_backup_and_restore(tmp_path: Path) -> None:
    filled(tmp_path / "data", docs=4).close()
    keys = KeyStore(tmp_path / "data")
    keys.create("reader", Role.READ)
    keys.close()
    runner = CliRunner()
    out = runner.invoke(app, ["backup", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "data")])
    assert out.exit_code == 0, out.output
    assert "c: 4 documents, 8 chunks" in out.output
    assert "control.db: 1 API keys (revoked included), 0 jobs" in out.output
    again = runner.invoke(app, ["backup", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "x")])
    assert again.exit_code == 1 and "no database" in again.output
    args = ["restore", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "data")]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "--force" in refused.output
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "moved" in forced.output or "replaced" in forced.output
    assert "control.db: 1 API keys" in forced.output
