"""Admission control: a bounded queue per kind of work, in front of the worker threads.

A request that needs model work (a search, a reranked search, an ingest, an embeddings call)
asks its kind's :class:`Gate` for a slot on the event loop, *before* it takes a worker thread,
so no request waits in a thread pool's unbounded queue. Per kind:

* at most ``workers`` requests run at once and at most ``queue`` wait, first come first served;
* the gate keeps an EWMA of the time a slot is held (the service time ``S``), so it knows how
  fast its queue drains (``workers / S`` requests a second);
* a request is refused at once, :class:`~ragserve.errors.Overloaded` (HTTP 429 with
  ``Retry-After``), when the queue is full or when the wait it can expect behind the queue
  plus its own service time would pass the deadline: it would not be answered in time;
* a waiting request gives up at ``deadline - S`` after it arrived (it could no longer be
  answered within the deadline) and gets 429; its work is never run;
* a waiting request whose client disconnected leaves the queue; its work is never run.

``Retry-After`` is the time the queue takes to drain at the measured rate,
``ceil((waiting + 1) x S / workers)``, at least 1 s and at most 60.

:class:`Gate` is plain, thread-safe bookkeeping with an injected clock (unit-tested with a fake
one); :class:`Admission` holds one gate per :class:`Kind` and does the waiting on asyncio and
the hop to a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from anyio import CapacityLimiter, to_thread

from ragserve.errors import ClientGone, Overloaded

if TYPE_CHECKING:
    from ragserve.config import Settings

T = TypeVar("T")
Clock = Callable[[], float]


class Kind(enum.StrEnum):
    """Kinds of work with a queue of their own (one kind's backlog never delays another's)."""

    SEARCH = "search"  #: searches without reranking
    RERANK = "rerank"  #: reranked searches and /v1/rerank (the cross-encoder)
    INGEST = "ingest"  #: documents added to a collection
    EMBEDDINGS = "embeddings"  #: /v1/embeddings


@dataclass(frozen=True, slots=True)
class Limit:
    """How many requests of one kind run at once, and how many may wait for a slot."""

    workers: int
    queue: int

    def __post_init__(self) -> None:
        if self.workers < 1 or self.queue < 0:
            raise ValueError(f"need workers >= 1 and queue >= 0, got {self}")


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DROPPED = "dropped"  #: left the queue without running (deadline, disconnect, shutdown)
    DONE = "done"


@dataclass(eq=False, slots=True)
class Ticket:
    """One request's place at a gate."""

    state: State
    arrived: float
    #: The latest time it may still start (arrival + deadline - expected service time).
    give_up: float
    started: float | None = None
    wake: Callable[[], None] | None = None


class Abandoned(ClientGone):
    """The client went away while its request waited; nobody reads this answer."""


#: How many recent service times the plan for a request's own run looks at.
RECENT_RUNS = 16


@dataclass(frozen=True, slots=True)
class GateSnapshot:
    kind: str
    workers: int
    queue_limit: int
    running: int
    waiting: int
    service_seconds: float | None
    admitted: int
    rejected: int
    expired: int
    abandoned: int


class Gate:
    """Slots and a bounded FIFO queue for one kind of work. Thread-safe; never blocks."""

    def __init__(
        self,
        kind: Kind | str,
        limit: Limit,
        deadline: float,
        *,
        clock: Clock = time.monotonic,
        smoothing: float = 0.2,
    ) -> None:
        if deadline <= 0 or not 0 < smoothing <= 1:
            raise ValueError("deadline must be > 0 and smoothing in (0, 1]")
        self.kind = str(kind)
        self.limit = limit
        self.deadline = deadline
        self.clock = clock
        self._smoothing = smoothing
        self._lock = threading.Lock()
        self._queue: deque[Ticket] = deque()
        self.running = 0
        #: EWMA of the seconds a slot is held; None until the first request finishes.
        self.service_seconds: float | None = None
        #: EWMA of the absolute deviation from it.
        self.service_spread = 0.0
        #: The last runs' service times: a request is planned to take as long as the slowest
        #: of them (or the mean plus twice the spread, if longer), so one that starts at its
        #: last moment still ends by the deadline unless it is slower than all of them.
        self._recent: deque[float] = deque(maxlen=RECENT_RUNS)
        self.admitted = self.rejected = self.expired = self.abandoned = 0

    @property
    def waiting(self) -> int:
        return len(self._queue)

    # ---------------------------------------------------------------- estimates

    def expected_wait(self, ahead: int) -> float:
        """Seconds until a request with ``ahead`` requests before it in the queue gets a slot."""
        if self.service_seconds is None:
            return 0.0
        return (ahead + 1) * self.service_seconds / self.limit.workers

    def planned_service(self) -> float:
        """Seconds a request is planned to hold its slot: the slowest recent run, or the mean
        plus twice the spread if that is longer."""
        if self.service_seconds is None:
            return 0.0
        return max(self.service_seconds + 2 * self.service_spread, max(self._recent, default=0.0))

    def retry_after(self) -> int:
        """Whole seconds for the queue to drain at the measured rate (at least 1, at most 60)."""
        seconds = self.expected_wait(len(self._queue))
        return min(60, max(1, math.ceil(seconds)))

    # ---------------------------------------------------------------- transitions

    def enter(self, wake: Callable[[], None] | None = None) -> Ticket:
        """A slot now (RUNNING), a place in the queue (WAITING, ``wake`` is called on a change),
        or :class:`Overloaded` when the request could not be answered within the deadline."""
        with self._lock:
            now = self.clock()
            self._drop_overdue(now)
            if self.running < self.limit.workers and not self._queue:
                self.running += 1
                self.admitted += 1
                return Ticket(State.RUNNING, now, now, started=now)
            service = self.planned_service()
            if len(self._queue) >= self.limit.queue:
                self.rejected += 1
                raise self._overloaded(f"{len(self._queue)} {self.kind} requests already wait")
            wait = self.expected_wait(len(self._queue))
            if wait + service > self.deadline:
                self.rejected += 1
                raise self._overloaded(
                    f"a {self.kind} request would be answered in ~{wait + service:.1f} s, past "
                    f"the {self.deadline:g} s deadline"
                )
            ticket = Ticket(State.WAITING, now, now + self.deadline - service, wake=wake)
            self._queue.append(ticket)
            return ticket

    def settle(self, ticket: Ticket, *, gone: bool = False) -> None:
        """Called by a waiter once woken, timed out (``gone=False``) or disconnected
        (``gone=True``): returns when it holds a slot, else removes it and raises 429."""
        with self._lock:
            if ticket.state is State.RUNNING and not gone:
                return
            if ticket.state is State.RUNNING:  # granted, but nobody will run it
                self._release(ticket, measure=False)
            elif ticket.state is State.WAITING:
                self._queue.remove(ticket)
                ticket.state = State.DROPPED
                if gone:
                    self.abandoned += 1
                else:
                    self.expired += 1
            if gone:
                raise Abandoned(f"the client left while its {self.kind} request waited")
            raise self._overloaded(
                f"a {self.kind} request waited until it could no longer be answered within the "
                f"{self.deadline:g} s deadline"
            )

    def leave(self, ticket: Ticket) -> None:
        """The ticket's work is done: free its slot, measure, and hand the slot on."""
        with self._lock:
            if ticket.state is State.RUNNING:
                self._release(ticket, measure=True)

    def close(self) -> None:
        """Drop every waiter (shutdown)."""
        with self._lock:
            while self._queue:
                self._drop(self._queue.popleft())

    def snapshot(self) -> GateSnapshot:
        with self._lock:
            return GateSnapshot(
                self.kind,
                self.limit.workers,
                self.limit.queue,
                self.running,
                len(self._queue),
                self.service_seconds,
                self.admitted,
                self.rejected,
                self.expired,
                self.abandoned,
            )

    # ---------------------------------------------------------------- under the lock

    def _release(self, ticket: Ticket, *, measure: bool) -> None:
        now = self.clock()
        ticket.state = State.DONE
        self.running -= 1
        if measure and ticket.started is not None:
            took = max(0.0, now - ticket.started)
            self._recent.append(took)
            previous = self.service_seconds
            if previous is None:
                self.service_seconds = took
            else:
                self.service_seconds = previous + self._smoothing * (took - previous)
                self.service_spread += self._smoothing * (
                    abs(took - previous) - self.service_spread
                )
            # Waiters planned with what was known when they came (nothing, at the start of a
            # burst): their last moment to start moves up when the runs turn out longer.
            latest_start = self.deadline - self.planned_service()
            for waiting in self._queue:
                waiting.give_up = min(waiting.give_up, waiting.arrived + latest_start)
        self._drop_overdue(now)
        while self._queue and self.running < self.limit.workers:
            nxt = self._queue.popleft()
            nxt.state, nxt.started = State.RUNNING, now
            self.running += 1
            self.admitted += 1
            if nxt.wake is not None:
                nxt.wake()

    def _drop_overdue(self, now: float) -> None:
        """Waiters past their give-up time leave the queue (they are told, and get 429)."""
        if any(t.give_up < now for t in self._queue):
            keep: deque[Ticket] = deque()
            for ticket in self._queue:
                if ticket.give_up < now:
                    self.expired += 1
                    self._drop(ticket)
                else:
                    keep.append(ticket)
            self._queue = keep

    @staticmethod
    def _drop(ticket: Ticket) -> None:
        ticket.state = State.DROPPED
        if ticket.wake is not None:
            ticket.wake()

    def _overloaded(self, why: str) -> Overloaded:
        return Overloaded(f"server overloaded: {why}; retry later", retry_after=self.retry_after())


class Admission:
    """One :class:`Gate` per :class:`Kind`; runs admitted work on a worker thread."""

    def __init__(
        self, limits: Mapping[Kind, Limit], deadline: float, *, clock: Clock = time.monotonic
    ) -> None:
        self.gates = {kind: Gate(kind, limits[kind], deadline, clock=clock) for kind in Kind}
        self._limiters: dict[Kind, CapacityLimiter] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Admission:
        s = settings
        return cls(
            {
                Kind.SEARCH: Limit(s.search_workers, s.search_queue),
                Kind.RERANK: Limit(s.rerank_workers, s.rerank_queue),
                Kind.INGEST: Limit(s.ingest_workers, s.ingest_queue),
                Kind.EMBEDDINGS: Limit(s.embeddings_workers, s.embeddings_queue),
            },
            s.request_deadline,
        )

    async def acquire(
        self, kind: Kind, disconnected: Callable[[], Awaitable[object]] | None = None
    ) -> Ticket:
        """Wait (on the event loop) for a slot, or raise 429. ``disconnected``, when given,
        returns once the client has gone away; a waiter whose client left is dropped."""
        gate = self.gates[kind]
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not woken.done():
                woken.set_result(None)

        def wake() -> None:  # from whichever thread released the slot
            loop.call_soon_threadsafe(resolve)

        ticket = gate.enter(wake)
        if ticket.state is State.RUNNING:
            return ticket
        watcher = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        waits: set[asyncio.Future[object]] = {woken}  # type: ignore[arg-type]
        if watcher is not None:
            waits.add(watcher)
        try:
            timeout = max(0.0, ticket.give_up - gate.clock())
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled while waiting: leave the queue (or the slot)
            with contextlib.suppress(Overloaded):
                gate.settle(ticket, gone=True)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        # A client that left is not served even if a slot came at the same moment.
        gone = watcher is not None and watcher.done() and not watcher.cancelled()
        gate.settle(ticket, gone=gone)
        return ticket

    def release(self, kind: Kind, ticket: Ticket) -> None:
        self.gates[kind].leave(ticket)

    async def run(
        self,
        kind: Kind,
        fn: Callable[[], T],
        *,
        disconnected: Callable[[], Awaitable[object]] | None = None,
        gone: threading.Event | None = None,
    ) -> T:
        """``fn()`` on a worker thread once admitted; 429 (:class:`Overloaded`) otherwise.

        The slot is held until ``fn`` returns, even if the caller is cancelled meanwhile
        (the thread cannot be stopped), so never more than ``workers`` run. ``gone`` is set
        when the client disconnects while ``fn`` runs: ``fn`` may check it between stages and
        skip the rest (a search skips its rerank)."""
        ticket = await self.acquire(kind, disconnected)
        watcher: asyncio.Future[object] | None = None
        if gone is not None and disconnected is not None:
            watcher = asyncio.ensure_future(disconnected())
            watcher.add_done_callback(lambda w: None if w.cancelled() else gone.set())
        try:
            work = asyncio.ensure_future(to_thread.run_sync(fn, limiter=self._limiter(kind)))
        except BaseException:
            self.release(kind, ticket)
            raise

        def done(finished: asyncio.Future[T]) -> None:
            self.release(kind, ticket)
            if watcher is not None:
                watcher.cancel()
            if not finished.cancelled():
                finished.exception()  # retrieved here too, in case the caller has gone

        work.add_done_callback(done)
        return await asyncio.shield(work)

    def _limiter(self, kind: Kind) -> CapacityLimiter:
        # Admitted work has threads of its own (as many as the gate admits), so it never
        # queues behind other handlers in the default pool; created on first use (needs a loop).
        limiter = self._limiters.get(kind)
        if limiter is None:
            limiter = self._limiters[kind] = CapacityLimiter(self.gates[kind].limit.workers)
        return limiter

    def close(self) -> None:
        for gate in self.gates.values():
            gate.close()

    def snapshot(self) -> list[GateSnapshot]:
        return [gate.snapshot() for gate in self.gates.values()]


async def wait_for_disconnect(receive: Callable[[], Awaitable[Mapping[str, object]]]) -> None:
    """Returns when the ASGI client disconnects. Only for a request whose body has been read
    (the next ``receive`` then waits for ``http.disconnect``)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return
