"""Filtered dense search on the embedded store with ``$in`` lists of several lengths.

    flock /tmp/bench.lock python -m bench.filter_bench [--docs 20000] [--runs 7]
        [--compiler FILE]

Builds a SQLite store in a temporary directory (``--docs`` one-chunk documents, 16-d random
vectors, metadata ``{"g": i % 100, "tags": [...]}``, every search exact), then times
``dense_search(k=10)`` with each filter and prints one JSON object: median milliseconds per
filter. ``--compiler FILE`` also times another ``to_sql`` (a copy of an older
``src/ragserve/store/sqlite/filters.py``, e.g. ``git show REV:src/ragserve/store/sqlite/filters.py
> /tmp/old.py``) on the same store, taking turns run by run (keys ``alt_*``); a filter it cannot
run is reported as the error it raised.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ragserve.store.sqlite.store as sqlite_store
from ragserve.store.sqlite import SqliteStore
from ragserve.types import Chunk, Document
from tests.fakes import random_unit

FILTERS: dict[str, dict[str, Any]] = {
    "in_3": {"g": {"$in": [1, 2, 3]}},
    "in_50": {"g": {"$in": list(range(50))}},
    "in_3_tags": {"tags": {"$in": ["t1", "u2", "x"]}},
    "in_400": {"g": {"$in": list(range(400))}},
    "in_1024": {"g": {"$in": list(range(1024))}},
    "nin_1024": {"g": {"$nin": list(range(1024))}},
}


def _load_compiler(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("alt_sqlite_filters", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.to_sql


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--compiler", type=Path)
    args = parser.parse_args()
    compilers = {"": sqlite_store.to_sql}
    if args.compiler is not None:
        compilers["alt_"] = _load_compiler(args.compiler)
    with tempfile.TemporaryDirectory(prefix="ragserve-filter-bench-") as tmp:
        store = SqliteStore(Path(tmp) / "store", exact_search_below=10**9)
        try:
            store.create_collection("c", "fake", 16)
            vectors = random_unit(args.docs, 16, seed=1)
            for i in range(args.docs):
                meta = {"g": i % 100, "tags": [f"t{i % 7}", f"u{i % 13}"]}
                doc = Document(id=f"d{i}", text="common x", title="t", metadata=meta)
                chunk = Chunk(f"d{i}", 0, "common x", start=0, end=8, metadata={})
                store.upsert_document("c", doc, f"h{i}", [chunk], vectors[i : i + 1])
            query = random_unit(1, 16, seed=5)[0]
            out: dict[str, Any] = {"docs": args.docs, "runs": args.runs}
            for name, flt in FILTERS.items():
                # The compilers take turns run by run, so a change in the machine's load
                # falls on both alike.
                times: dict[str, list[float]] = {prefix: [] for prefix in compilers}
                errors: dict[str, str] = {}
                for _ in range(args.runs):
                    for prefix, to_sql in compilers.items():
                        if prefix in errors:
                            continue
                        sqlite_store.to_sql = to_sql
                        start = time.perf_counter()
                        try:
                            store.dense_search("c", query, 10, flt)
                        except sqlite3.OperationalError as exc:
                            errors[prefix] = f"error: {exc}"
                        times[prefix].append(time.perf_counter() - start)
                for prefix in compilers:
                    key = f"{prefix}{name}_p50_ms"
                    median = round(statistics.median(times[prefix]) * 1000, 2)
                    out[key] = errors.get(prefix, median)
        finally:
            store.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
