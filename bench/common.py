"""Shared benchmark helpers: real server processes on loopback, memory, the load generator."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
#: SciFact (BEIR); BENCH_SCIFACT_DIR overrides it (from a git worktree, ../shared is not there).
EVAL_DIR = Path(os.environ.get("BENCH_SCIFACT_DIR", ROOT.parent / "shared" / "eval" / "scifact"))
OUT = ROOT / "bench" / "out"


class PresetQueries:
    """An embedder whose query vectors were computed beforehand (``vectors[text]``): search
    timings and sweeps then exclude query embedding."""

    name = "preset"

    def __init__(self, vectors: Any) -> None:
        self.vectors = vectors
        self.dimension = len(next(iter(vectors.values())))

    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> Any:
        return np.stack([self.vectors[t] for t in texts])

    def embed_documents(self, texts: Sequence[str]) -> Any:
        raise NotImplementedError("query vectors only")

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        raise NotImplementedError("query vectors only")


def git_revision() -> str:
    """The checkout's short commit, and whether ``src/`` differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + (" (with uncommitted changes)" if git("status", "--porcelain", "src") else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _status_kb(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` (``VmRSS``, ``RssAnon``, ...)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.endswith(" kB"):
            out[name] = int(value.split()[0])
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MB."""
    kb = _status_kb(pid).get("VmRSS")
    return float("nan") if kb is None else kb / 1024


def rss_split_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` in its parts (MB): ``anon`` (the process's own memory), ``file`` (pages of
    mapped files, mostly shared libraries: how many are mapped depends on the page cache, as the
    kernel maps cached neighbours of a faulted page) and ``shmem``."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}
    status = _status_kb(pid)
    return {
        label: round(status[name] / 1024, 1) for name, label in fields.items() if name in status
    }


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}, Python {sys.version.split()[0]}"


def median_spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "runs": len(values),
    }


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    ready_seconds: float

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)


@contextmanager
def server(
    command: Sequence[str],
    env: dict[str, str],
    *,
    ready_path: str = "/readyz",
    timeout: float = 120.0,
    log: Path | None = None,
) -> Iterator[Server]:
    """Start ``command`` (which must listen on ``env['PORT']``), wait for ready, stop it after."""
    port = env["PORT"]
    url = f"http://127.0.0.1:{port}"
    out = log.open("wb") if log else subprocess.DEVNULL
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(command), env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        ready = None
        with httpx.Client(timeout=1.0) as client:
            while time.perf_counter() - started < timeout:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}: {command}")
                try:
                    if client.get(url + ready_path).status_code == 200:
                        ready = time.perf_counter() - started
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
        if ready is None:
            raise RuntimeError(f"server not ready after {timeout} s: {command}")
        yield Server(proc, url, ready)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def ragserve_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ragserve.cli",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def loadgen(
    url: str, bodies: list[dict[str, Any]], *, concurrency: int, requests: int, seconds: float
) -> dict[str, Any]:
    """Run the load generator in its own process and return its JSON summary."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"bodies-{os.getpid()}.jsonl"
    path.write_text("\n".join(json.dumps(b) for b in bodies))
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                "--url",
                url,
                "--bodies",
                str(path),
                "--concurrency",
                str(concurrency),
                "--requests",
                str(requests),
                "--seconds",
                str(seconds),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
    finally:
        path.unlink(missing_ok=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def scifact_docs(limit: int | None = None) -> list[dict[str, str]]:
    """SciFact corpus records as ragserve documents (title + " " + text, the BEIR protocol)."""
    docs = []
    with (EVAL_DIR / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            docs.append({"id": str(rec["_id"]), "text": f"{rec['title']} {rec['text']}".strip()})
            if limit and len(docs) >= limit:
                break
    return docs


def scifact_test_queries() -> list[str]:
    qrels = {
        line.split("\t")[0]
        for line in (EVAL_DIR / "qrels" / "test.tsv").read_text().splitlines()[1:]
        if line.strip()
    }
    out = []
    with (EVAL_DIR / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if str(rec["_id"]) in qrels:
                out.append(rec["text"])
    return out
