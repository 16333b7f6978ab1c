"""A process SIGKILLed during a bulk ingest loses nothing it acknowledged, and leaves no half
document: after a restart every acknowledged document is complete and searchable in every mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from ragserve.filters import matches, parse_filter
from ragserve.search import Searcher, SearchRequest
from ragserve.store.sqlite import SqliteStore
from tests.fakes import PresetEmbedder

DIM = 16
THRESHOLD = 60  # the collection crosses into the HNSW index early in the run

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    from ragserve.store.sqlite import SqliteStore
    from ragserve.types import Chunk, Document

    dim, threshold = int(sys.argv[2]), int(sys.argv[3])
    filtered = len(sys.argv) > 4  # filtered searches keep the metadata index live
    store = SqliteStore(Path(sys.argv[1]), exact_search_below=threshold)
    store.create_collection("c", "fake", dim)

    def put(doc_id, seed, n):
        v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
        chunks = [Chunk(doc_id, j, f"tok{seed}x{j} shared words") for j in range(n)]
        store.upsert_document("c", Document(doc_id, "", metadata={"seed": seed}), str(seed),
                              chunks, v)
        if filtered:
            store.dense_search("c", v[0], 3, {"seed": {"$gte": seed // 2}})
            store.lexical_search("c", "shared", 3, {"seed": {"$in": [seed, seed - 1]}})
        print(doc_id, seed, n, flush=True)  # acknowledged

    i = 0
    while True:
        put(f"d{i}", i, 3)
        if i % 10 == 9:  # replace an earlier document with fewer chunks
            put(f"d{i - 5}", 100_000 + i, 2)
        i += 1
    """
)


def vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


Acks = dict[str, tuple[int, int]]


def start_writer(data: Path, filtered: bool = False) -> subprocess.Popen[str]:
    """The WRITER in a process of its own, its acknowledgements on a text pipe (``filtered``:
    it also runs filtered searches, so it is updating its metadata index when killed)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    extra = ["filtered"] if filtered else []
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data), str(DIM), str(THRESHOLD), *extra],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def read_acks(lines: Iterable[str], acked: Acks, until: int | None = None) -> None:
    """Record the writer's acknowledgements (a document's last one wins); return once ``until``
    documents are acknowledged, or at the end of ``lines``."""
    for line in lines:
        doc_id, seed, n = line.split()
        acked[doc_id] = (int(seed), int(n))
        if until is not None and len(acked) >= until:
            return


@pytest.mark.integration
@pytest.mark.parametrize(("acks_before_kill", "filtered"), [(40, False), (200, False), (120, True)])
def test_sigkill_during_ingest_keeps_every_acknowledged_document(
    tmp_path: Path, acks_before_kill: int, filtered: bool
) -> None:
    proc = start_writer(tmp_path, filtered)
    assert proc.stdout is not None
    acked: Acks = {}
    try:
        read_acks(proc.stdout, acked, until=acks_before_kill)
        os.kill(proc.pid, signal.SIGKILL)  # mid-ingest: the writer never stops by itself
        # What the writer printed before the kill landed was acknowledged too, read or not
        # (on a loaded machine it gets several more writes in before the signal).
        read_acks(proc.stdout, acked)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    store = SqliteStore(tmp_path, exact_search_below=THRESHOLD)
    try:
        check_after_restart(store, acked)
    finally:
        store.close()


def check_after_restart(store: SqliteStore, acked: dict[str, tuple[int, int]]) -> None:
    searcher = Searcher(store)
    info = store.get_collection("c")
    # At most one document past the last acknowledgement may have been committed.
    extra = info.documents - len(acked)
    assert extra in (0, 1)
    expected_chunks = sum(n for _, n in acked.values())
    # The one write that may have committed unacknowledged is a new 3-chunk document (+3) or
    # the replacement of an earlier one by 2 chunks (-1): at 40 and 200 acknowledgements the
    # writer's next write is always such a replacement.
    assert info.chunks - expected_chunks in (-1, 0, 3)
    last = list(acked)[-10:]
    for number, (doc_id, (seed, n)) in enumerate(acked.items()):
        doc = store.get_document("c", doc_id)
        # Or its unacknowledged replacement: the writer replaces d{i-5} after d{i}, with seed
        # 100_000 + i.
        assert doc.content_hash in (str(seed), str(100_000 + seed + 5))
        if doc.content_hash != str(seed):
            continue  # replaced by a later (unacknowledged) write: checked as a whole below
        assert [c.text for c in doc.chunks] == [f"tok{seed}x{j} shared words" for j in range(n)]
        if number % 10 and doc_id not in last:
            continue  # search a sample (and the most recent ones) in every mode
        v = vectors(seed, n)
        for j in range(n):
            chunk_id = f"{doc_id}#{j}"
            assert store.dense_search("c", v[j], 1)[0].chunk_id == chunk_id
            assert store.lexical_search("c", f"tok{seed}x{j}", 1)[0].chunk_id == chunk_id
            assert store.dense_search("c", v[j], 1, {"seed": seed})[0].chunk_id == chunk_id
            hybrid = searcher.search(
                "c",
                SearchRequest(f"tok{seed}x{j}", top_k=1),
                embedder=PresetEmbedder(v[j]),
            )
            assert hybrid.hits[0].chunk_id == chunk_id
    # No half documents: every stored document has all the chunks its writer gave it.
    conn = store._reader()
    for doc_id, content_hash, count in conn.execute(
        "SELECT d.doc_id, d.content_hash, count(c.id) FROM documents d "
        "JOIN chunks c ON c.document_id = d.id GROUP BY d.id"
    ):
        assert count == (2 if int(content_hash) >= 100_000 else 3), doc_id
    conn.execute("INSERT INTO fts_1 (fts_1) VALUES ('integrity-check')")
    assert len(store._indexes[1]) == info.chunks
    # Filters (the metadata index, rebuilt from what SQLite committed) agree with the stored
    # metadata, selective and broad.
    stored = {d: json.loads(m) for d, m in conn.execute("SELECT doc_id, metadata FROM documents")}
    top = max(m["seed"] for m in stored.values())
    for raw in ({"seed": {"$lt": 5}}, {"seed": {"$gte": top // 2}}, {"seed": {"$lt": 100_000}}):
        want = {d for d, m in stored.items() if matches(parse_filter(raw), m)}
        assert {h.document_id for h in store.lexical_search("c", "shared", 10_000, raw)} == want
        assert {
            h.document_id for h in store.dense_search("c", vectors(1, 1)[0], 10_000, raw)
        } == want
