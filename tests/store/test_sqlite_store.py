"""SQLite backend specifics: ANN parity with exact search, index rebuilds, concurrency, FTS."""

from __future__ import annotations

import importlib.metadata
import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from ragserve.errors import CollectionNotFound, Unavailable
from ragserve.store.sqlite.ann import AnnParams
from ragserve.store.sqlite.store import SqliteStore, fts_query
from ragserve.types import Chunk, Document
from tests.fakes import crash, random_unit

DIM = 24


def fill(store: SqliteStore, vectors: np.ndarray, per_doc: int = 4, start: int = 0) -> None:
    for d in range(len(vectors) // per_doc):
        lo = d * per_doc
        doc_id = f"d{start + d}"
        chunks = [
            Chunk(doc_id, j, f"chunk {start + d} {j} word{(start + d) % 50}")
            for j in range(per_doc)
        ]
        store.upsert_document("c", Document(doc_id, ""), "h", chunks, vectors[lo : lo + per_doc])


def open_ann(path: Path) -> SqliteStore:
    return SqliteStore(path, exact_search_below=100)


def ids(store: SqliteStore, q: np.ndarray, k: int = 10) -> list[str]:
    return [h.chunk_id for h in store.dense_search("c", q, k)]


def exact_ids(vectors: np.ndarray, q: np.ndarray, per_doc: int = 4, k: int = 10) -> list[str]:
    order = np.argsort(-(vectors @ q))[:k]
    return [f"d{i // per_doc}#{i % per_doc}" for i in order]


def test_ann_recall_matches_exact_search(tmp_path: Path) -> None:
    vectors = random_unit(2000, DIM, seed=1)
    store = open_ann(tmp_path)
    store.create_collection("c", "fake", DIM)
    fill(store, vectors)
    assert store._indexes[1].is_ann
    queries = random_unit(100, DIM, seed=2)
    found = sum(len(set(ids(store, q)) & set(exact_ids(vectors, q))) for q in queries)
    assert found / 1000 >= 0.95
    # Scores are cosine similarities, as with exact search.
    hit = store.dense_search("c", vectors[17], 1)[0]
    assert hit.chunk_id == "d4#1" and hit.score == pytest.approx(1.0, abs=1e-4)
    store.close()


def test_collection_grows_from_exact_into_ann(tmp_path: Path) -> None:
    vectors = random_unit(200, DIM, seed=3)
    store = open_ann(tmp_path)
    store.create_collection("c", "fake", DIM)
    fill(store, vectors[:80])
    assert not store._indexes[1].is_ann
    fill(store, vectors[80:], start=20)
    assert store._indexes[1].is_ann
    q = vectors[150]
    assert ids(store, q, 5) == exact_ids(vectors, q, k=5)
    store.close()
    assert (tmp_path / "ann" / "1.hnsw").is_file()
    manifest = json.loads((tmp_path / "ann" / "1.json").read_text())
    assert manifest["count"] == 200 and manifest["dimension"] == DIM
    assert manifest["format_version"] == 1 and manifest["library"] == "faiss"
    assert manifest["library_version"] == importlib.metadata.version("faiss-cpu")


def build(tmp_path: Path, n: int = 400) -> np.ndarray:
    vectors = random_unit(n, DIM, seed=4)
    store = open_ann(tmp_path)
    store.create_collection("c", "fake", DIM)
    fill(store, vectors)
    store.close()
    return vectors


def test_saved_index_is_reused_when_it_matches(tmp_path: Path) -> None:
    vectors = build(tmp_path)
    index_file = tmp_path / "ann" / "1.hnsw"
    mtime = index_file.stat().st_mtime_ns
    store = open_ann(tmp_path)
    assert ids(store, vectors[9], 3)[0] == "d2#1"
    assert store._keeper.last_load[1] == "loaded"
    store.close()
    assert index_file.stat().st_mtime_ns == mtime  # loaded, not rebuilt and saved again


@pytest.mark.parametrize(
    "damage", ["truncate", "garbage", "manifest", "no-manifest", "no-index", "keys", "no-keys"]
)
def test_corrupt_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    vectors = build(tmp_path)
    index_file, manifest_file = tmp_path / "ann" / "1.hnsw", tmp_path / "ann" / "1.json"
    if damage == "truncate":
        index_file.write_bytes(index_file.read_bytes()[:1000])
    elif damage == "garbage":
        raw = bytearray(index_file.read_bytes())
        raw[200:400] = b"\xff" * 200
        index_file.write_bytes(bytes(raw))
    elif damage == "manifest":
        manifest_file.write_text("{not json")
    elif damage == "no-manifest":
        manifest_file.unlink()
    elif damage == "keys":
        np.save(tmp_path / "ann" / "1.keys.npy", np.arange(400, dtype=np.int64))
    elif damage == "no-keys":
        (tmp_path / "ann" / "1.keys.npy").unlink()
    else:
        index_file.unlink()
    store = open_ann(tmp_path)
    q = random_unit(1, DIM, seed=8)[0]
    assert ids(store, q, 5) == exact_ids(vectors, q, k=5)
    assert store._keeper.last_load[1] == "rebuilt"
    store.close()
    manifest = json.loads(manifest_file.read_text())  # rewritten
    assert manifest["count"] == 400


def test_stale_index_is_caught_up(tmp_path: Path) -> None:
    vectors = build(tmp_path)
    ann_dir = tmp_path / "ann"
    old = {p.name: p.read_bytes() for p in ann_dir.iterdir()}
    store = open_ann(tmp_path)
    more = random_unit(40, DIM, seed=5)
    fill(store, more, start=1000)
    store.delete_document("c", "d0")
    store.close()
    for name, data in old.items():  # put back the index of an older database state
        (ann_dir / name).write_bytes(data)
    store = open_ann(tmp_path)
    assert ids(store, more[6], 1) == ["d1001#2"]
    assert all(not i.startswith("d0#") for i in ids(store, vectors[1], 10))
    assert len(store._indexes[1]) == 400 - 4 + 40
    assert store._keeper.last_load[1] == "caught up (+40 -4)"
    store.close()


def test_unsaved_changes_are_recovered_from_sqlite(tmp_path: Path) -> None:
    """A process that dies without close(): the saved index is stale, SQLite has it all."""
    vectors = build(tmp_path)
    store = open_ann(tmp_path)
    fill(store, random_unit(8, DIM, seed=6), start=500)
    crash(store)
    store = open_ann(tmp_path)
    assert store.get_collection("c").chunks == 408
    assert ids(store, random_unit(8, DIM, seed=6)[3], 1) == ["d500#3"]
    assert ids(store, vectors[0], 1) == ["d0#0"]
    assert store._keeper.last_load[1] == "caught up (+8 -0)"
    store.close()


def test_deletes_really_remove_from_fts_and_ann(tmp_path: Path) -> None:
    vectors = build(tmp_path)
    store = open_ann(tmp_path)
    store.delete_document("c", "d3")
    index = store._indexes[1].inner
    assert len(index) == 396
    assert not any(k in index._live for k in range(13, 17))  # rowids of d3's chunks
    assert index.tombstones == 4  # type: ignore[union-attr]  # ...kept out of every search
    conn = sqlite3.connect(tmp_path / "ragserve.db")
    word3 = conn.execute("SELECT rowid FROM fts_1 WHERE fts_1 MATCH 'word3'").fetchall()
    (gone,) = conn.execute(
        "SELECT count(*) FROM fts_1_docsize WHERE id BETWEEN 13 AND 16"
    ).fetchone()
    (rows,) = conn.execute("SELECT count(*) FROM fts_1_docsize").fetchone()
    conn.execute("INSERT INTO fts_1 (fts_1) VALUES ('integrity-check')")  # index == content
    conn.close()
    assert sorted(r[0] for r in word3) == [213, 214, 215, 216]  # d53 only
    assert (gone, rows) == (0, 396)
    assert all(h.document_id != "d3" for h in store.lexical_search("c", "3", 50))
    assert all(h.document_id != "d3" for h in store.dense_search("c", vectors[13], 20))
    store.close()


def test_a_row_read_while_its_collection_is_deleted_is_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path)
    store.create_collection("c", "fake", 8)
    read_row = store._collection_row
    raced: list[bool] = []

    def racing_read(conn: sqlite3.Connection, name: str):  # type: ignore[no-untyped-def]
        row = read_row(conn, name)
        if not raced:  # the delete commits after this read and before the row is cached
            raced.append(True)
            store.delete_collection(name)
        return row

    monkeypatch.setattr(store, "_collection_row", racing_read)
    assert store.collection_embedder("c") == "fake"  # the read that raced
    monkeypatch.undo()
    with pytest.raises(CollectionNotFound):
        store.get_collection("c")
    store.create_collection("c", "other", 4)
    assert store.collection_embedder("c") == "other"
    store.close()


def test_deleting_a_collection_removes_its_files(tmp_path: Path) -> None:
    build(tmp_path)
    store = open_ann(tmp_path)
    store.delete_collection("c")
    assert list((tmp_path / "ann").iterdir()) == []
    conn = sqlite3.connect(tmp_path / "ragserve.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    (chunks,) = conn.execute("SELECT count(*) FROM chunks").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.close()
    assert "fts_1" not in tables and chunks == 0
    assert free == 0 and pages < 20  # the space went back to the file system
    store.close()


def test_a_second_process_cannot_open_the_same_directory(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    with pytest.raises(Unavailable, match="in use"):
        SqliteStore(tmp_path)
    store.close()
    SqliteStore(tmp_path).close()


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.create_collection("c", "fake", DIM)
    store.close()
    store.close()  # idempotent
    with pytest.raises(Unavailable):
        store.lexical_search("c", "x", 3)
    with pytest.raises(Unavailable):
        store.create_collection("d", "fake", DIM)


@pytest.mark.parametrize("exact_below", [0, 1_000_000])
def test_searches_run_while_an_ingest_writes(tmp_path: Path, exact_below: int) -> None:
    store = SqliteStore(tmp_path, exact_search_below=exact_below)
    store.create_collection("c", "fake", DIM)
    vectors = random_unit(1200, DIM, seed=7)
    fill(store, vectors[:200])
    errors: list[BaseException] = []
    done = threading.Event()
    searches = [0]

    def reader(seed: int) -> None:
        qs = random_unit(50, DIM, seed=seed)
        try:
            while not done.is_set():
                for q in qs[:5]:
                    hits = store.dense_search("c", q, 10)
                    assert len(hits) == 10
                    assert store.lexical_search("c", "chunk", 10)
                    store.dense_search("c", q, 5, {"x": {"$exists": False}})
                    searches[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    try:
        fill(store, vectors[200:], start=50)
        store.delete_document("c", "d60")
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert searches[0] > 0
    assert store.get_collection("c").chunks == 1196
    q = vectors[1000]
    assert store.dense_search("c", q, 1)[0].chunk_id == "d250#0"
    store.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", '"hello" OR "world"'),
        ("the cat and the hat", '"cat" OR "hat"'),
        ("the and of", '"the" OR "and" OR "of"'),  # only stopwords: keep them
        ('a "quoted" NEAR(x) col:y -z *', '"quoted" OR "near" OR "x" OR "col" OR "y" OR "z"'),
        ("", ""),
        ("?!", ""),
    ],
)
def test_fts_query_is_sanitized(text: str, expected: str) -> None:
    assert fts_query(text) == expected


def test_a_large_k_gets_a_beam_of_twice_k(tmp_path: Path) -> None:
    """HNSW's beam must be wider than k for recall at k (the store asks for max(ef, 2k))."""
    dim = 64
    vectors = random_unit(6000, dim, seed=5)
    store = SqliteStore(tmp_path, exact_search_below=100, ann_params=AnnParams(expansion_search=8))
    store.create_collection("c", "fake", dim)
    fill(store, vectors)
    assert store._indexes[1].is_ann
    queries = random_unit(40, dim, seed=6)
    found = sum(len(set(ids(store, q, 100)) & set(exact_ids(vectors, q, k=100))) for q in queries)
    store.close()
    assert found / (100 * len(queries)) >= 0.95
