"""The embedded store's ANN index: deletes as tombstones and their compaction, filtered search
around tombstones, indexes written by the hnswlib version of the store, and verification of an
index file before the library reads it."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from ragserve.files import sha256_file
from ragserve.store.sqlite import SqliteStore
from ragserve.store.sqlite.ann import AnnParams, DenseIndex, ExactIndex, HnswIndex
from ragserve.store.sqlite.meta import AllowedChunks
from ragserve.types import Chunk, Document
from tests.fakes import random_unit
from tests.store.test_sqlite_store import DIM, build, exact_ids, ids, open_ann


def refuse_load(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Make any attempt to hand an index file to the library fail the test (and record it)."""
    calls: list[Path] = []

    def load(cls: type[HnswIndex], path: Path, *args: object) -> HnswIndex:
        calls.append(path)
        raise AssertionError(f"the library was asked to read {path}")

    monkeypatch.setattr(HnswIndex, "load", classmethod(load))
    return calls


#: The manifest fields the hnswlib version of the store wrote (format 1).
HNSWLIB_MANIFEST_FIELDS = (
    "format_version", "library", "library_version", "dimension", "metric", "count",
    "generation", "keys_checksum", "keys_sha256", "file_sha256", "connectivity", "expansion_add",
)  # fmt: skip


def hnswlib_file(count: int, dim: int) -> bytes:
    """Bytes laid out like hnswlib 0.8's ``save_index`` (header of size_t/int/double fields,
    then the level-0 block); the contents do not matter: the store must never read them."""
    m = 16
    per_element = 4 + 2 * m * 4 + dim * 4 + 8  # links, vector, label
    header = struct.pack(
        "<QQQQQQiIQQQdQ", 0, count, count, per_element, per_element - 8, 4 + 2 * m * 4,
        0, 0, m, 2 * m, m, 1 / np.log(m), 128,
    )  # fmt: skip
    body = np.random.default_rng(0).bytes(count * per_element) + b"\x00\x00\x00\x00" * count
    return header + body


def test_an_index_saved_by_the_hnswlib_version_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data directory from before the library change: its manifest says hnswlib and matches
    the database in every other field. The store rebuilds from SQLite without reading the file."""
    vectors = build(tmp_path)
    ann_dir = tmp_path / "ann"
    manifest_file, index_file = ann_dir / "1.json", ann_dir / "1.hnsw"
    current = json.loads(manifest_file.read_text())
    old_bytes = hnswlib_file(current["count"], DIM)
    index_file.write_bytes(old_bytes)
    old = {  # exactly the fields the hnswlib version wrote
        **current,
        "format_version": 1,
        "library": "hnswlib",
        "library_version": "0.8.0",
        "metric": "cos",
        "file_sha256": hashlib.sha256(old_bytes).hexdigest(),
        "connectivity": 16,
        "expansion_add": 128,
    }
    old = {k: old[k] for k in HNSWLIB_MANIFEST_FIELDS}
    manifest_file.write_text(json.dumps(old, indent=2, sort_keys=True))
    calls = refuse_load(monkeypatch)
    store = open_ann(tmp_path)
    q = random_unit(1, DIM, seed=8)[0]
    assert ids(store, q, 10) == exact_ids(vectors, q)
    assert ids(store, vectors[9], 1) == ["d2#1"]
    assert store._keeper.last_load[1] == "rebuilt"
    assert calls == []
    store.close()
    manifest = json.loads(manifest_file.read_text())
    assert manifest["library"] == HnswIndex.library != "hnswlib"
    assert manifest["file_sha256"] == sha256_file(index_file) != old["file_sha256"]
    monkeypatch.undo()
    store = open_ann(tmp_path)  # and from now on the new file is loaded, not rebuilt
    assert ids(store, q, 10) == exact_ids(vectors, q)
    assert store._keeper.last_load[1] == "loaded"
    store.close()


@pytest.mark.parametrize("damage", ["garbage", "truncate", "appended"])
def test_a_damaged_index_file_never_reaches_the_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    vectors = build(tmp_path)
    index_file = tmp_path / "ann" / "1.hnsw"
    raw = index_file.read_bytes()
    if damage == "garbage":
        raw = raw[:300] + b"\xff" * 64 + raw[364:]
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw = raw + b"\x00"
    index_file.write_bytes(raw)
    calls = refuse_load(monkeypatch)
    store = open_ann(tmp_path)
    q = random_unit(1, DIM, seed=9)[0]
    assert ids(store, q, 5) == exact_ids(vectors, q, k=5)
    assert store._keeper.last_load[1] == "rebuilt" and calls == []
    store.close()


def replace_document(store: SqliteStore, d: int, seed: int, per_doc: int = 4) -> np.ndarray:
    """Upsert document ``d<d>`` again with new vectors (its old chunks are deleted)."""
    new = random_unit(per_doc, DIM, seed=seed)
    doc_id = f"d{d}"
    chunks = [Chunk(doc_id, j, f"replaced {d} {j}") for j in range(per_doc)]
    store.upsert_document("c", Document(doc_id, ""), f"h{seed}", chunks, new)
    return new


def test_deletes_and_upserts_leave_tombstones_that_searches_skip(tmp_path: Path) -> None:
    vectors = build(tmp_path)  # 100 documents x 4 chunks
    store = open_ann(tmp_path)
    for d in range(10):
        store.delete_document("c", f"d{d}")
    new = replace_document(store, 50, seed=77)
    index = store._indexes[1].inner
    assert isinstance(index, HnswIndex)
    assert len(index) == 400 - 40 and index.tombstones == 44  # below the compaction fraction
    live = np.concatenate([vectors[40:200], new, vectors[204:]])
    live_ids = [f"d{i // 4}#{i % 4}" for i in range(40, 400)]
    for q in [*vectors[:40:7], *vectors[200:204], new[1]]:  # deleted/replaced chunks' vectors
        found = ids(store, q, 10)
        order = np.argsort(-(live @ q))[:10]
        assert found == [live_ids[i] for i in order]
    assert ids(store, new[1], 1) == ["d50#1"]
    # Tombstones survive a save and a reopen: the reopened index still skips them.
    store.close()
    store = open_ann(tmp_path)
    assert not {f"d{d}#0" for d in range(10)} & set(ids(store, vectors[0], 50))
    assert store._keeper.last_load[1] == "loaded"
    assert store._indexes[1].inner.tombstones == 44  # type: ignore[union-attr]
    assert ids(store, vectors[200], 1) != ["d50#0"]
    store.close()


def test_tombstones_past_the_fraction_trigger_a_compaction(tmp_path: Path) -> None:
    vectors = build(tmp_path)
    store = SqliteStore(
        tmp_path, exact_search_below=100, ann_params=AnnParams(max_tombstone_fraction=0.1)
    )
    assert ids(store, vectors[0], 1) == ["d0#0"]
    for d in range(9):  # 36 of 400 nodes dead: under 10 %
        store.delete_document("c", f"d{d}")
    index = store._indexes[1].inner
    assert isinstance(index, HnswIndex) and index.tombstones == 36
    store.delete_document("c", "d9")  # 40 of 400: compacted, in the background
    store._indexes[1].wait_for_compaction(60)
    index = store._indexes[1].inner
    assert isinstance(index, HnswIndex)
    assert index.tombstones == 0 and index.nodes == len(index) == 360
    q = random_unit(1, DIM, seed=10)[0]
    expected = [f"d{i // 4 + 10}#{i % 4}" for i in np.argsort(-(vectors[40:] @ q))[:10]]
    assert ids(store, q, 10) == expected
    store.close()
    store = open_ann(tmp_path)
    assert ids(store, q, 10) == expected
    assert store._keeper.last_load[1] == "loaded"
    assert store._indexes[1].inner.tombstones == 0  # type: ignore[union-attr]
    store.close()


def test_filtered_search_around_tombstones_returns_every_allowed_hit(tmp_path: Path) -> None:
    """Dead chunks must not count as found candidates: with 40 % of the graph tombstoned, a
    filter keeping a third of the live chunks (too many to scan: the HNSW path) still gets
    the exact top k."""
    vectors = random_unit(4000, DIM, seed=11)
    params = AnnParams(max_tombstone_fraction=0.5)
    store = SqliteStore(tmp_path, exact_search_below=100, ann_params=params)
    store.create_collection("c", "fake", DIM)
    per_doc = 4
    for d in range(1000):
        lo = d * per_doc
        doc = Document(f"d{d}", "", metadata={"group": d % 5})
        chunks = [Chunk(doc.id, j, f"chunk {d} {j}") for j in range(per_doc)]
        store.upsert_document("c", doc, "h", chunks, vectors[lo : lo + per_doc])
    for d in range(1000):
        if d % 5 in (0, 2):
            store.delete_document("c", f"d{d}")
    index = store._indexes[1].inner
    assert isinstance(index, HnswIndex) and index.tombstones == 1600 and len(index) == 2400
    rows = np.array([d * per_doc + j for d in range(1, 1000, 5) for j in range(per_doc)])
    for q in random_unit(10, DIM, seed=12):
        hits = store.dense_search("c", q, 30, {"group": 1})
        order = rows[np.argsort(-(vectors[rows] @ q))[:30]]
        assert [h.chunk_id for h in hits] == [f"d{i // per_doc}#{i % per_doc}" for i in order]
    # The unfiltered search skips the dead ones too.
    alive = np.array([i for i in range(4000) if (i // per_doc) % 5 not in (0, 2)])
    q = vectors[0]  # a dead chunk's own vector
    order = alive[np.argsort(-(vectors[alive] @ q))[:10]]
    assert ids(store, q, 10) == [f"d{i // per_doc}#{i % per_doc}" for i in order]
    store.close()


def test_a_new_index_is_empty_and_searchable() -> None:
    index = HnswIndex(8, AnnParams())
    keys, scores = index.search(random_unit(1, 8)[0], 5)
    assert len(keys) == 0 and len(scores) == 0
    index.add(np.array([5, 6], dtype=np.int64), random_unit(2, 8, seed=1))
    index.remove(np.array([5], dtype=np.int64))
    keys, _ = index.search(random_unit(1, 8, seed=2)[0], 5)
    assert keys.tolist() == [6]


def test_the_exact_index_matches_a_brute_force_scan_through_adds_removes_and_growth() -> None:
    """Columns grow (capacity doubling), removals move the last column into the hole, and keys
    come back: after each step search, filtered search and vector reads equal a plain scan."""
    rng = np.random.default_rng(7)
    index = ExactIndex(8)
    truth: dict[int, np.ndarray] = {}
    for step in range(60):
        new = rng.choice(400, size=int(rng.integers(1, 30)), replace=False).astype(np.int64)
        vectors = rng.standard_normal((len(new), 8)).astype(np.float32) * 3  # not unit
        index.add(new, vectors)
        for key, v in zip(new.tolist(), vectors, strict=True):
            truth[key] = v / np.linalg.norm(v)
        gone = rng.choice(sorted(truth), size=min(len(truth), int(rng.integers(0, 15))))
        index.remove(np.unique(gone).astype(np.int64))
        for key in np.unique(gone).tolist():
            truth.pop(key)
        keys = np.array(sorted(truth), dtype=np.int64)
        matrix = np.stack([truth[k] for k in keys.tolist()])
        assert len(index) == len(keys) and sorted(index.keys().tolist()) == keys.tolist()
        q = random_unit(1, 8, seed=step)[0]
        got_keys, got_scores = index.search(q, 10)
        expected = matrix @ q
        order = np.lexsort((keys, -expected))[:10]
        assert got_keys.tolist() == keys[order].tolist()
        assert got_scores == pytest.approx(expected[order], abs=1e-5)
        mask = np.zeros(400, dtype=bool)
        mask[keys[::3]] = True
        got_keys, _ = index.search_allowed(q, 5, AllowedChunks(mask, int(mask.sum())))
        allowed = keys[::3]
        scores = matrix[::3] @ q
        assert got_keys.tolist() == allowed[np.lexsort((allowed, -scores))[:5]].tolist()
        probe = np.array([*keys[:4].tolist(), 999], dtype=np.int64)  # 999: never added
        kept, read = index.vectors(probe)
        assert kept.tolist() == keys[:4].tolist()
        assert read == pytest.approx(matrix[:4], abs=1e-6)


def test_adding_a_key_again_replaces_its_vector() -> None:
    """faiss cannot replace a node in place: a key added again rebuilds the graph without it."""
    index = HnswIndex(8, AnnParams())
    first, second = random_unit(2, 8, seed=3)
    index.add(np.array([1, 2, 3], dtype=np.int64), np.stack([first, second, -first]))
    index.remove(np.array([3], dtype=np.int64))
    index.add(np.array([2, 3], dtype=np.int64), np.stack([first, second]))
    assert (len(index), index.nodes, index.tombstones) == (3, 3, 0)
    keys, scores = index.search(first, 3)
    assert sorted(keys[:2].tolist()) == [1, 2] and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert index.vectors(np.array([3], dtype=np.int64))[1][0] == pytest.approx(second, abs=1e-6)


def test_writes_during_a_compaction_go_on_and_are_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compaction rebuilds on its own thread: a write made meanwhile does not wait for it,
    and lands in the new index when it is swapped in."""
    params = AnnParams(max_tombstone_fraction=0.1)
    vecs = random_unit(400, DIM, seed=3)
    dense = DenseIndex(DIM, HnswIndex(DIM, params))
    none, no_vectors = np.zeros(0, dtype=np.int64), np.zeros((0, DIM), dtype=np.float32)
    dense.apply(none, np.arange(400, dtype=np.int64), vecs)
    old = dense.inner
    inside, gate = threading.Event(), threading.Event()
    original_add = HnswIndex.add

    def held_add(self: HnswIndex, keys: np.ndarray, vectors: np.ndarray) -> None:
        if threading.current_thread().name == "ann-compaction":
            inside.set()
            gate.wait(30)
        original_add(self, keys, vectors)

    monkeypatch.setattr(HnswIndex, "add", held_add)
    try:
        dense.apply(np.arange(40, dtype=np.int64), none, no_vectors)  # 10 % dead: compaction
        assert inside.wait(30)
        new = random_unit(5, DIM, seed=4)
        dense.apply(np.arange(40, 45, dtype=np.int64), np.arange(1000, 1005), new)  # not blocked
        assert dense.inner is old  # still serving from the old index
        assert dense.search(new[0], 1)[0].tolist() == [1000]
    finally:
        gate.set()
    dense.wait_for_compaction(60)
    assert dense.inner is not old
    fresh = dense.inner
    assert isinstance(fresh, HnswIndex) and len(fresh) == 360 and fresh.tombstones == 5
    for i in range(5):
        assert dense.search(new[i], 1)[0].tolist() == [1000 + i]
    keys, _ = dense.search(vecs[42], 10)
    assert not set(keys.tolist()) & set(range(45))


def test_int8_vectors_rescore_to_exact_cosines_and_reload(tmp_path: Path) -> None:
    """int8 vectors in the graph: hits are scored with the float32 vectors from SQLite (the
    exact cosine), recall stays near exact, the saved index loads as is, and a store opened
    with the other kind of vectors rebuilds it instead of misreading it."""
    dim, n = 32, 600
    vectors = random_unit(n, dim, seed=5)
    params = AnnParams(vectors="int8")
    store = SqliteStore(tmp_path, exact_search_below=100, ann_params=params)
    store.create_collection("c", "fake", dim)
    for i in range(n):
        doc = Document(f"d{i}", "", metadata={"odd": i % 2})
        store.upsert_document("c", doc, "h", [Chunk(f"d{i}", 0, f"w{i}")], vectors[i : i + 1])
    queries = random_unit(20, dim, seed=6)
    found = 0
    for q in queries:
        hits = store.dense_search("c", q, 10)
        exact = np.argsort(-(vectors @ q))[:10]
        found += len({int(h.document_id[1:]) for h in hits} & set(exact.tolist()))
        for h in hits:
            assert h.score == pytest.approx(float(vectors[int(h.document_id[1:])] @ q), abs=1e-5)
        odd = store.dense_search("c", q, 10, {"odd": 1})
        assert len(odd) == 10 and all(int(h.document_id[1:]) % 2 for h in odd)
    assert found >= 0.95 * 10 * len(queries)
    store.close()
    store = SqliteStore(tmp_path, exact_search_below=100, ann_params=params)
    store.dense_search("c", queries[0], 1)
    assert store._keeper.last_load[1] == "loaded"
    store.close()
    store = SqliteStore(tmp_path, exact_search_below=100)
    assert (
        store.dense_search("c", queries[0], 1)[0].document_id
        == f"d{np.argmax(vectors @ queries[0])}"
    )
    assert store._keeper.last_load[1] == "rebuilt"
    store.close()


def test_the_search_beam_widens_with_the_graph_and_is_at_least_twice_k() -> None:
    params = AnnParams()
    assert params.beam(50_000, 10) == params.expansion_search == 96
    assert params.beam(100_000, 10) == 96
    assert params.beam(1_000_000, 10) == 96 + 160
    assert 96 < params.beam(300_000, 10) < 256
    assert params.beam(1_000, 100) == 200
