"""Hostile input against a real server: /healthz latency and peak memory while each file goes in.

    flock /tmp/bench.lock python -m bench.hostile_bench [--files bomb.docx,pages.pdf] \
        [--pythonpath OLD_CHECKOUT/src]

Starts ``ragserve serve`` (real cached models) on a loopback port, creates a collection, then
posts each hostile file of :mod:`bench.hostile_files` (and the 10 MB title as a JSON document)
one at a time. While each request runs, one thread asks ``/healthz`` every 50 ms and another
samples the resident memory of the server and its child processes (the parser workers) every
20 ms. Prints JSON: per file, the outcome (status, error), the request's wall time, /healthz
p50 / p99 / max over the request, and the peak RSS of the server + workers and of the server
alone. ``--pythonpath`` runs an older checkout's code (a "before" measurement).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench import hostile_files as hostile
from bench.common import free_port, machine, ragserve_command, server

MB = 1024 * 1024
FILES = {
    "bomb.docx": hostile.docx_run_bomb,
    "divs.html": hostile.html_empty_divs,
    "pages.pdf": hostile.pdf_many_pages,
    "lying.docx": hostile.lying_zip_docx,
    "long.jsonl": hostile.jsonl_long_line,
    "title.json": None,  # the 10 MB title, as a JSON document
}


def rss(pid: int, *, children: bool) -> int:
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            kids = [  # children of every thread (the parser processes start from worker threads)
                k for t in Path(f"/proc/{current}/task").iterdir()
                for k in (t / "children").read_text().split()
            ]  # fmt: skip
        except OSError:
            continue
        total += next(
            (
                int(line.split()[1]) * 1024
                for line in status.splitlines()
                if line.startswith("VmRSS:")
            ),
            0,
        )
        if children:
            pending.extend(int(k) for k in kids)
    return total


def measure(url: str, pid: int, post: Callable[[], httpx.Response]) -> dict[str, Any]:
    stop = threading.Event()
    health: list[float] = []
    peaks = {"tree": 0, "server": 0}

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            while not stop.is_set():
                started = time.monotonic()
                client.get("/healthz")
                health.append(time.monotonic() - started)
                stop.wait(0.05)

    def sample() -> None:
        while not stop.is_set():
            peaks["tree"] = max(peaks["tree"], rss(pid, children=True))
            peaks["server"] = max(peaks["server"], rss(pid, children=False))
            stop.wait(0.02)

    threads = [threading.Thread(target=f, daemon=True) for f in (probe, sample)]
    baseline = rss(pid, children=True)
    for t in threads:
        t.start()
    started = time.monotonic()
    try:
        response = post()
        outcome: dict[str, Any] = {"http": response.status_code}
        try:
            (result,) = response.json()["results"]
            outcome |= {"status": result["status"], "chunks": result["chunks"]}
            if result.get("error"):
                outcome["error"] = result["error"]
        except (ValueError, KeyError, TypeError):
            outcome["body"] = response.text[:300]
    except httpx.HTTPError as exc:
        outcome = {"http": None, "error": f"{type(exc).__name__}: {exc}"}
    wall = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join(timeout=700)
    ordered = sorted(health)
    return {
        **outcome,
        "seconds": round(wall, 2),
        "healthz_ms": {
            "probes": len(ordered),
            "p50": round(1000 * statistics.median(ordered), 1) if ordered else None,
            "p99": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)
            if ordered
            else None,
            "max": round(1000 * ordered[-1], 1) if ordered else None,
        },
        "rss_mb": {
            "before": round(baseline / MB),
            "peak_server_and_parsers": round(peaks["tree"] / MB),
            "peak_server": round(peaks["server"] / MB),
        },
    }


def _poster(client: httpx.Client, name: str, tmp: Path) -> tuple[int, Callable[[], httpx.Response]]:
    """(bytes sent, a function that posts the hostile input)."""
    build = FILES[name]
    if build is None:
        body = {"documents": [hostile.long_title_record()]}
        return len(json.dumps(body)), lambda: client.post("/v1/collections/kb/documents", json=body)
    data = build(tmp / name).read_bytes()
    files = [("files", (name, data, "application/octet-stream"))]
    return len(data), lambda: client.post("/v1/collections/kb/documents", files=files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", default=",".join(FILES))
    parser.add_argument("--pythonpath", default=None, help="run this checkout's src instead")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    args = parser.parse_args()
    names = [n for n in args.files.split(",") if n]
    out: dict[str, Any] = {"machine": machine(), "files": {}}
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        env = {"PORT": str(port), "RAGSERVE_DATA_DIR": str(tmp / "data"), "HF_HUB_OFFLINE": "1"}
        if args.pythonpath:
            env["PYTHONPATH"] = args.pythonpath
        with (
            server(ragserve_command(port), env, log=tmp / "server.log") as srv,
            httpx.Client(base_url=srv.url, timeout=args.timeout) as client,
        ):
            client.post("/v1/collections", json={"name": "kb"}).raise_for_status()
            out["rss_mb_ready"] = round(rss(srv.proc.pid, children=True) / MB)
            for name in names:
                size, post = _poster(client, name, tmp)
                out["files"][name] = {"bytes": size, **measure(srv.url, srv.proc.pid, post)}
                print(json.dumps({name: out["files"][name]}), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
