"""Ingest SciFact end to end through the CLI: documents/s, chunks/s, time share per stage.

    python -m bench.ingest_bench [--limit N] [--keep DIR]

Writes the corpus as JSONL records (id, title, text) to a temporary file (the data stays in
../shared; nothing is copied into the repository), runs `ragserve ingest FILE --collection
scifact --stats-json ...` in a fresh data directory, and prints the CLI's own figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import EVAL_DIR, OUT, machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=0, help="only the first N documents")
    parser.add_argument("--keep", type=Path, help="data directory to ingest into and keep")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ragserve-ingest-bench-") as tmp:
        data_dir = args.keep or Path(tmp) / "data"
        records = Path(tmp) / "scifact.jsonl"
        with (EVAL_DIR / "corpus.jsonl").open(encoding="utf-8") as src, records.open("w") as dst:
            for i, line in enumerate(src):
                if args.limit and i >= args.limit:
                    break
                rec = json.loads(line)
                out = {"id": rec["_id"], "title": rec["title"], "text": rec["text"]}
                dst.write(json.dumps(out) + "\n")
        stats_path = Path(tmp) / "stats.json"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "ragserve.cli", "ingest", str(records), "--collection",
             "scifact", "--stats-json", str(stats_path)],
            env={**os.environ, "RAGSERVE_DATA_DIR": str(data_dir),
                 "HF_HUB_OFFLINE": "1"},
            check=True,
        )  # fmt: skip
        wall = time.perf_counter() - started
        stats = json.loads(stats_path.read_text())
    result = {
        "machine": machine(),
        "command": "python -m bench.ingest_bench",
        "process_wall_s": round(wall, 1),
        **stats,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ingest_bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
