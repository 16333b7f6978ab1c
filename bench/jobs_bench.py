"""An ingest job over HTTP against a real `ragserve serve`: SciFact uploaded as one JSONL file.

Run 1 follows a job to the end, polling ``GET /v1/jobs/{id}`` (progress, rate, ETA), and
checks that the final counts equal the collection's. Run 2 cancels a job half way and checks
the collection is consistent: exactly the documents the job counted, each complete.

    flock /tmp/bench.lock python -m bench.jobs_bench [--limit N] [--data-dir DIR]

Prints JSON. The embedder is the configured one (bge-small-en-v1.5 int8 by default).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import free_port, machine, ragserve_command, scifact_docs, server


def _follow(
    http: httpx.Client, job_id: str, cancel_at: float | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    samples = []
    cancelled = False
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        samples.append({k: job[k] for k in ("progress", "done", "rate_per_s", "eta_s")})
        if job["state"] not in ("queued", "running"):
            return job, samples
        if cancel_at is not None and not cancelled and job["progress"] >= cancel_at:
            http.post(f"/v1/jobs/{job_id}/cancel")
            cancelled = True
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="First N SciFact documents.")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    docs = scifact_docs(args.limit)
    body = "\n".join(json.dumps(d) for d in docs).encode()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="ragserve-jobs-"))
    port = free_port()
    env = {"PORT": str(port), "RAGSERVE_PORT": str(port), "RAGSERVE_DATA_DIR": str(data_dir)}
    out: dict[str, Any] = {"machine": machine(), "documents": len(docs)}
    with (
        server(ragserve_command(port), env, timeout=300) as srv,
        httpx.Client(base_url=srv.url, timeout=120) as http,
    ):
        for name, cancel_at in (("full", None), ("cancelled", 0.5)):
            http.post("/v1/collections", json={"name": name})
            started = time.perf_counter()
            files = [("files", ("corpus.jsonl", body, "application/x-ndjson"))]
            r = http.post(f"/v1/collections/{name}/jobs", files=files)
            r.raise_for_status()
            accepted = time.perf_counter() - started
            job, samples = _follow(http, r.json()["id"], cancel_at)
            collection = http.get(f"/v1/collections/{name}").json()
            run = {
                "accepted_s": round(accepted, 2),
                "seconds": round(time.perf_counter() - started, 1),
                "state": job["state"],
                "progress": job["progress"],
                "counts": {k: job[k] for k in ("done", "created", "unchanged", "failed")},
                "chunks": job["chunks"],
                "rate_per_s": job["rate_per_s"],
                "collection": {k: collection[k] for k in ("documents", "chunks")},
                "counts_match": collection["documents"] == job["created"]
                and collection["chunks"] == job["chunks"],
                "eta_samples": samples[1:6],
            }
            if cancel_at is not None:  # the documents counted are the first `done`, whole
                ids = [d["id"] for d in docs]
                present = [
                    http.get(f"/v1/collections/{name}/documents/{i}").status_code == 200
                    for i in ids[: job["done"] + 5]
                ]
                run["first_done_present"] = all(present[: job["done"]])
                run["after_done_absent"] = not any(present[job["done"] :])
            out[name] = run
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
