"""What the embedded store's damage checks and backups cost at a given size.

``python -m bench.backup_bench --chunks 100000`` builds a store of random texts and vectors
(384-d, 20 chunks a document), then times (median of ``--rounds``): ``PRAGMA quick_check`` at
open, tantivy's file verification (CRC32 of every segment file), ``ragserve backup`` and
``ragserve restore``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ragserve.store.sqlite import SqliteStore
from ragserve.store.sqlite.backup import backup, restore
from ragserve.store.sqlite.health import check_database
from ragserve.store.sqlite.lexical import verify_files
from ragserve.types import Chunk, Document


def build(path: Path, chunks: int, dim: int = 384, per_doc: int = 20) -> float:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(20_000)]
    started = time.perf_counter()
    store = SqliteStore(path, synchronous="NORMAL")
    store.create_collection("c", "bench", dim)
    for d in range(chunks // per_doc):
        texts = [" ".join(rng.choice(words, 40)) for _ in range(per_doc)]
        vectors = rng.standard_normal((per_doc, dim)).astype(np.float32)
        doc = Document(f"d{d}", "")
        store.upsert_document(
            "c", doc, str(d), [Chunk(doc.id, j, t) for j, t in enumerate(texts)], vectors
        )
    store.lexical_search("c", "w1 w2", 10)  # builds the tantivy index
    store.close()
    return time.perf_counter() - started


def timed(fn: object, rounds: int) -> float:
    runs = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        runs.append(time.perf_counter() - started)
    return round(statistics.median(runs), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ragserve-backup-bench-"))
    try:
        data = root / "data"
        build_s = build(data, args.chunks)

        def do_backup() -> None:
            shutil.rmtree(root / "bk", ignore_errors=True)
            backup(data, root / "bk")

        def do_restore() -> None:
            shutil.rmtree(root / "restored", ignore_errors=True)
            restore(root / "bk", root / "restored")

        out = {
            "chunks": args.chunks,
            "build_s": round(build_s, 1),
            "db_mb": round((data / "ragserve.db").stat().st_size / 1e6, 1),
            "lexical_mb": round(
                sum(p.stat().st_size for p in (data / "lexical").rglob("*") if p.is_file()) / 1e6,
                1,
            ),
            "quick_check_s": timed(lambda: check_database(data / "ragserve.db"), args.rounds),
            "lexical_verify_s": timed(lambda: verify_files(data / "lexical" / "1"), args.rounds),
            "backup_s": timed(do_backup, args.rounds),
            "restore_s": timed(do_restore, args.rounds),
        }
        print(json.dumps(out))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
