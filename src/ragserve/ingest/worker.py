"""Uploads are parsed in separate processes, with a time and a memory budget per document.

A parser fed hostile bytes can take minutes and gigabytes (a DOCX of millions of runs, an HTML
page of millions of tags, a PDF of 100,000 pages), and pure-Python parsers hold the GIL while they
do: in the server's own process that froze every request, ``/healthz`` included. Here each upload
goes to a small pool of ``python -m ragserve.ingest.worker`` processes:

* at most ``workers`` uploads are parsed at once and at most ``max_waiting`` wait for a parser
  (more: :class:`~ragserve.errors.Overloaded`, HTTP 429); the caller waits on a thread, never on
  the event loop;
* a worker's address space is capped (``RLIMIT_AS``, ``Limits.memory``): a parser that needs more
  gets ``MemoryError`` and that document fails, "over the parser's memory budget";
* a document that takes longer than ``Limits.timeout`` seconds fails, "parsing took more than N
  s", and its worker is killed and replaced;
* a worker that dies (a crash in a C library) fails that document, not the request.

Requests and replies are JSON (never pickle: a process that parses hostile bytes is not trusted
with the server's objects) in length-prefixed frames on the worker's stdin / stdout. Workers
start on first use and end when the pool is closed or the server exits (their stdin closes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
import weakref
from typing import IO, Any

from ragserve.errors import Overloaded, Unavailable
from ragserve.ingest.limits import BudgetExceeded, Limits
from ragserve.ingest.parsers import check_chars
from ragserve.ingest.sources import IngestFailure, Item, iter_bytes
from ragserve.types import Document, Section

__all__ = ["ParsePool", "decode_items", "encode_items", "main"]

_LEN = struct.Struct("<Q")
#: A reply is two frames: this status, then the items.
_SERVING, _EXITING = b"serving", b"exiting"
#: A worker's first frame, once its libraries are loaded.
_READY = b"ready"
#: Seconds a new worker may take to start (not part of any document's budget).
START_TIMEOUT = 120.0


# ------------------------------------------------------------------------------ wire format


def encode_items(items: list[Item]) -> bytes:
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, IngestFailure):
            out.append({"failure": dataclasses.asdict(item)})
        else:
            out.append(
                {
                    "document": {
                        "id": item.id,
                        "text": item.text,
                        "title": item.title,
                        "metadata": item.metadata,
                        "sections": [[s.start, s.end, list(s.headings), s.page]
                                     for s in item.sections],
                    }
                }
            )  # fmt: skip
    return json.dumps(out).encode()


def decode_items(payload: bytes) -> list[Item]:
    items: list[Item] = []
    for entry in json.loads(payload):
        if "failure" in entry:
            items.append(IngestFailure(**entry["failure"]))
            continue
        d = entry["document"]
        sections = tuple(Section(a, b, tuple(h), p) for a, b, h, p in d["sections"])
        items.append(Document(d["id"], d["text"], d["title"], d["metadata"], sections))
    return items


def _write_frame(stream: IO[bytes], *parts: bytes) -> None:
    for part in parts:
        stream.write(_LEN.pack(len(part)))
        stream.write(part)
    stream.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


# ------------------------------------------------------------------------------ the worker


def main() -> None:
    """A worker process: read (request, bytes) frames, parse, answer; exit at end of input."""
    memory = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if memory > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a library's print() must not corrupt the frames
    # The parsers' libraries load before the first document, so its time budget is its own.
    import pypdf  # noqa: F401

    with contextlib.suppress(Exception):  # the HTML parser's libraries, whichever they are
        list(iter_bytes(b"<html><body><p>warm</p></body></html>", "warm.html", max_bytes=1024))

    _write_frame(stdout, _READY)
    while True:
        header = _read_exact(stdin, _LEN.size)
        if header is None:
            return
        request = json.loads(stdin.read(_LEN.unpack(header)[0]))
        limits = Limits(**request["limits"])
        name = request["filename"]
        size = _read_exact(stdin, _LEN.size)
        try:
            data = stdin.read(_LEN.unpack(size)[0]) if size else b""
            items = [
                _capped(item, limits.max_chars)
                for item in iter_bytes(data, name, request["content_type"],
                                       max_bytes=limits.max_bytes, limits=limits)
            ]  # fmt: skip
            del data
            reply = encode_items(items)
        except MemoryError:
            # The heap may be fragmented or half-freed: say so, and a fresh process takes over.
            _write_frame(stdout, _EXITING, encode_items([_over_memory(name, limits)]))
            return
        _write_frame(stdout, _SERVING, reply)


def _capped(item: Item, max_chars: int) -> Item:
    """A record whose text is over ``max_chars`` fails here, not after its text crossed over
    to the server (files are checked by their parser already)."""
    if isinstance(item, Document) and len(item.text) > max_chars:
        try:
            check_chars(len(item.text), max_chars)
        except BudgetExceeded as exc:
            source = item.metadata.get("source") if isinstance(item.metadata, dict) else None
            return IngestFailure.of(str(source or item.id), exc)
    return item


def _over_memory(name: str, limits: Limits) -> IngestFailure:
    return IngestFailure(
        name,
        f"parsing needs more than the parser's memory budget of {limits.memory // 2**20:,} MiB: "
        "refused (parse_memory_bytes)",
        "budget_exceeded",
    )


# ------------------------------------------------------------------------------ the pool


_ENDED = (
    "the parser process ended while parsing this file (over its memory budget, "
    "parse_memory_bytes, or a crash in a parser library)"
)


class _Lost(Exception):
    """The worker timed out or died; the document fails with this message."""


class _Worker:
    def __init__(self, memory: int) -> None:
        env = {**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ragserve.ingest.worker", str(memory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        try:
            fd = self.proc.stdout.fileno()
            ready = self._read(fd, _LEN.unpack(self._read(fd, _LEN.size, deadline))[0], deadline)
        except (TimeoutError, _Lost):
            ready = b""
        if ready != _READY:
            self.kill()
            raise Unavailable("a parser process could not start (see the server log)")

    def call(self, request: dict[str, Any], data: bytes, deadline: float) -> tuple[bool, bytes]:
        """(whether the worker goes on serving, the items as JSON)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            _write_frame(self.proc.stdin, json.dumps(request).encode(), data)
        except (BrokenPipeError, OSError):
            raise _Lost(_ENDED) from None
        fd = self.proc.stdout.fileno()
        frames = []
        for _ in range(2):
            header = self._read(fd, _LEN.size, deadline)
            frames.append(self._read(fd, _LEN.unpack(header)[0], deadline))
        return frames[0] == _SERVING, frames[1]

    def _read(self, fd: int, n: int, deadline: float) -> bytes:
        parts: list[bytes] = []
        while n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            piece = os.read(fd, min(n, 1 << 20))
            if not piece:
                raise _Lost(_ENDED)
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def alive(self) -> bool:
        return self.proc.poll() is None


def _kill_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.kill()


class ParsePool:
    """Parses uploads in at most ``workers`` processes; thread-safe, blocking (call it from a
    worker thread)."""

    def __init__(self, limits: Limits, *, workers: int = 1, max_waiting: int = 64) -> None:
        self.limits = limits
        self.workers = max(1, workers)
        self.max_waiting = max_waiting
        self._slots = threading.BoundedSemaphore(self.workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._waiting = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._all)

    def parse(self, data: bytes, filename: str, content_type: str | None = None) -> list[Item]:
        """The upload's documents (or records) and failures; never raises for a bad document."""
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise Overloaded("too many uploads waiting to be parsed; retry shortly", 2.0)
            self._waiting += 1
        try:
            self._slots.acquire()
        finally:
            with self._lock:
                self._waiting -= 1
        try:
            return self._parse(data, filename, content_type)
        finally:
            self._slots.release()

    def _parse(self, data: bytes, filename: str, content_type: str | None) -> list[Item]:
        worker = self._take()
        request = {
            "filename": filename,
            "content_type": content_type,
            "limits": dataclasses.asdict(self.limits),
        }
        started = time.monotonic()
        try:
            serving, payload = worker.call(request, data, started + self.limits.timeout)
        except TimeoutError:
            self._discard(worker)
            message = f"parsing took more than {self.limits.timeout:g} s: refused (parse_timeout)"
            return [IngestFailure(filename, message, "budget_exceeded")]
        except _Lost as exc:
            self._discard(worker)
            return [IngestFailure(filename, str(exc), "parse_error")]
        if serving:
            self._give(worker)
        else:
            self._discard(worker)
        return decode_items(payload)

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                self._all.remove(worker)
        worker = _Worker(self.limits.memory)  # outside the lock: it takes a second to start
        with self._lock:
            self._all.append(worker)
        return worker

    def _give(self, worker: _Worker) -> None:
        with self._lock:
            if self._closed or not worker.alive():
                self._all.remove(worker)
                worker.kill()
            else:
                self._idle.append(worker)

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.remove(worker)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._idle = list(self._all), []
        _kill_all(workers)


if __name__ == "__main__":
    main()
