"""Dynamic batching of model work, with bounded admission.

Concurrent requests each want a few texts embedded (or a few pairs scored). Running them one by
one wastes the model's batch parallelism; queueing them without bound turns overload into
timeouts. :class:`MicroBatcher` does neither: callers submit work and get a future; a worker
thread takes everything that is waiting (up to a batch limit), runs it as one model call, and
resolves each future with its slice. When more than ``max_pending`` items wait, ``submit`` raises
:class:`~ragserve.errors.Overloaded` at once (HTTP 429 + Retry-After); in the server that is a
backstop, since admission control (:mod:`ragserve.admission`) bounds the requests that reach a
batcher before they take a thread. With ``workers > 1``, that
many model calls run at once (for sessions that use one core each: the query embedder), and
each worker takes its share of the waiting jobs, not all of them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ragserve.errors import Overloaded, Unavailable

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    rejected: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1024))


@dataclass
class _Job(Generic[In, Out]):
    items: Sequence[In]
    future: Future[list[Out]]


class MicroBatcher(Generic[In, Out]):
    """Batches ``run(items) -> results`` calls from many threads into one model call."""

    def __init__(
        self,
        run: Callable[[Sequence[In]], Sequence[Out]],
        *,
        max_batch: int = 64,
        max_pending: int = 256,
        name: str = "batcher",
        workers: int = 1,
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.stats = BatchStats()
        self._queue: deque[_Job[In, Out]] = deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, items: Sequence[In]) -> Future[list[Out]]:
        future: Future[list[Out]] = Future()
        if not items:
            future.set_result([])
            return future
        with self._cond:
            if self._closed:
                raise Unavailable("the model worker is shut down")
            if self._pending and self._pending + len(items) > self.max_pending:
                self.stats.rejected += 1
                raise Overloaded(
                    f"too much model work in flight ({self._pending} items); retry shortly",
                    retry_after=1.0,
                )
            self._queue.append(_Job(items, future))
            self._pending += len(items)
            self._cond.notify()
        return future

    def __call__(self, items: Sequence[In]) -> list[Out]:
        return self.submit(items).result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _take(self) -> list[_Job[In, Out]]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            # A worker takes its share of what waits and wakes another for the rest. Taking all
            # would run the lot one model call after another on this worker's core while the
            # others idle, and every caller would wait for the last (c16 searches: machine idle
            # 13 -> 10 %, p99 lower; docs/service.md).
            share = -(-len(self._queue) // len(self._threads))
            jobs: list[_Job[In, Out]] = []
            count = 0
            while (
                self._queue
                and len(jobs) < share
                and (not jobs or count + len(self._queue[0].items) <= self.max_batch)
            ):
                job = self._queue.popleft()
                jobs.append(job)
                count += len(job.items)
            if self._queue:
                self._cond.notify()
            return jobs

    def _run_alone(self, job: _Job[In, Out]) -> None:
        try:
            job.future.set_result(list(self._run(list(job.items))))
        except BaseException as exc:  # noqa: BLE001 - handed to this caller
            job.future.set_exception(exc)

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                return  # closed and drained
            flat = [item for job in jobs for item in job.items]
            try:
                results = list(self._run(flat))
            except BaseException as exc:  # noqa: BLE001 - handed to the callers
                if len(jobs) == 1:
                    jobs[0].future.set_exception(exc)
                else:
                    # One caller's bad input must not fail its batch-mates: each runs again
                    # on its own, and only the ones that fail alone get their error.
                    for job in jobs:
                        self._run_alone(job)
            else:
                offset = 0
                for job in jobs:
                    job.future.set_result(results[offset : offset + len(job.items)])
                    offset += len(job.items)
            finally:
                with self._cond:
                    self._pending -= len(flat)
                    self.stats.batches += 1
                    self.stats.items += len(flat)
                    self.stats.largest = max(self.stats.largest, len(flat))
                    self.stats.sizes.append(len(flat))
