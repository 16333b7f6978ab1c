"""Admission control: slots, bounded FIFO queues, deadlines and Retry-After, on a fake clock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from ragserve.admission import Abandoned, Admission, Gate, Kind, Limit, State
from ragserve.config import Settings
from ragserve.errors import Overloaded

T = TypeVar("T")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.tick = 0.0  #: added after each reading

    def __call__(self) -> float:
        now = self.now
        self.now += self.tick
        return now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def measured_gate(
    clock: FakeClock, *, workers: int, queue: int, deadline: float, service: float
) -> Gate:
    """A gate whose EWMA service time is ``service`` (one request run for that long)."""
    gate = Gate(Kind.RERANK, Limit(workers, queue), deadline, clock=clock)
    ticket = gate.enter()
    clock.advance(service)
    gate.leave(ticket)
    assert gate.service_seconds == pytest.approx(service)
    return gate


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        Limit(0, 1)
    with pytest.raises(ValueError):
        Limit(1, -1)
    with pytest.raises(ValueError):
        Gate(Kind.SEARCH, Limit(1, 1), 0)


def test_slots_then_a_bounded_queue_then_429() -> None:
    clock = FakeClock()
    gate = Gate(Kind.SEARCH, Limit(workers=2, queue=2), deadline=5, clock=clock)
    running = [gate.enter(), gate.enter()]
    assert [t.state for t in running] == [State.RUNNING] * 2
    waiting = [gate.enter(), gate.enter()]
    assert [t.state for t in waiting] == [State.WAITING] * 2
    with pytest.raises(Overloaded) as info:
        gate.enter()
    assert "2 search requests already wait" in info.value.message
    assert info.value.retry_after >= 1  # nothing measured yet: the 1 s floor
    snap = gate.snapshot()
    assert (snap.running, snap.waiting, snap.admitted, snap.rejected) == (2, 2, 2, 1)


def test_a_freed_slot_goes_to_the_first_waiter_and_the_service_time_is_measured() -> None:
    clock = FakeClock()
    gate = Gate(Kind.SEARCH, Limit(workers=1, queue=5), deadline=5, clock=clock)
    woken: list[str] = []
    first = gate.enter()
    second = gate.enter(lambda: woken.append("second"))
    third = gate.enter(lambda: woken.append("third"))
    clock.advance(1.0)
    gate.leave(first)
    assert woken == ["second"] and second.state is State.RUNNING and second.started == clock.now
    assert third.state is State.WAITING and gate.running == 1
    assert gate.service_seconds == 1.0
    clock.advance(2.0)
    gate.leave(second)  # EWMA with smoothing 0.2: 1.0 + 0.2 * (2.0 - 1.0)
    assert gate.service_seconds == pytest.approx(1.2)
    assert woken == ["second", "third"]
    gate.settle(third)  # woken with a slot: returns
    gate.leave(third)
    assert gate.running == 0 and gate.waiting == 0


def test_a_request_that_would_miss_the_deadline_is_refused_with_the_drain_time() -> None:
    clock = FakeClock()
    # 2 workers, 1.5 s a request: the k-th waiter starts after k x 0.75 s and ends 1.5 s later.
    gate = measured_gate(clock, workers=2, queue=100, deadline=5.0, service=1.5)
    held = [gate.enter(), gate.enter()]
    assert all(t.state is State.RUNNING for t in held)
    queued = [gate.enter() for _ in range(4)]  # 4th waiter: 4 x 0.75 + 1.5 = 4.5 s <= 5
    assert all(t.state is State.WAITING for t in queued)
    assert queued[0].give_up == pytest.approx(clock.now + 5.0 - 1.5)
    with pytest.raises(Overloaded) as info:  # 5th: 5 x 0.75 + 1.5 = 5.25 s > 5
        gate.enter()
    assert "past the 5 s deadline" in info.value.message
    # Retry-After: the queue of 4 (+1) drains in 5 x 1.5 / 2 = 3.75 s -> 4.
    assert info.value.retry_after == 4 == gate.retry_after()
    assert gate.waiting == 4 and gate.rejected == 1


def test_a_waiter_that_can_no_longer_be_answered_in_time_is_dropped_not_run() -> None:
    clock = FakeClock()
    gate = measured_gate(clock, workers=1, queue=10, deadline=5.0, service=2.0)
    woken: list[str] = []
    holder = gate.enter()
    late = gate.enter(lambda: woken.append("late"))
    assert late.give_up == pytest.approx(clock.now + 3.0)
    clock.advance(3.5)  # the holder ran long; `late` could not finish within 5 s any more
    gate.leave(holder)
    assert woken == ["late"] and late.state is State.DROPPED
    assert gate.running == 0 and gate.expired == 1
    with pytest.raises(Overloaded):
        gate.settle(late)


def test_a_waiter_whose_timer_fired_leaves_the_queue_with_429() -> None:
    clock = FakeClock()
    gate = Gate(Kind.INGEST, Limit(workers=1, queue=1), deadline=5, clock=clock)
    holder = gate.enter()
    waiter = gate.enter()
    with pytest.raises(Overloaded) as info:
        gate.settle(waiter)  # woken by its own timer, still waiting
    assert not isinstance(info.value, Abandoned)
    assert waiter.state is State.DROPPED and gate.waiting == 0 and gate.expired == 1
    gate.leave(holder)
    assert gate.running == 0


def test_a_client_that_left_gives_back_its_place_or_its_slot() -> None:
    clock = FakeClock()
    gate = Gate(Kind.EMBEDDINGS, Limit(workers=1, queue=5), deadline=5, clock=clock)
    holder = gate.enter()
    gone_waiting = gate.enter()
    granted_but_gone = gate.enter()
    next_in_line = gate.enter()
    with pytest.raises(Abandoned):
        gate.settle(gone_waiting, gone=True)
    assert gone_waiting.state is State.DROPPED and gate.abandoned == 1
    gate.leave(holder)  # the slot goes to `granted_but_gone` ...
    assert granted_but_gone.state is State.RUNNING
    with pytest.raises(Abandoned):  # ... whose client left at that moment: it is passed on
        gate.settle(granted_but_gone, gone=True)
    assert next_in_line.state is State.RUNNING and gate.running == 1
    assert gate.service_seconds is not None  # only the holder's run was measured
    gate.leave(next_in_line)
    assert gate.running == 0 and gate.waiting == 0


def test_close_drops_every_waiter() -> None:
    gate = Gate(Kind.SEARCH, Limit(workers=1, queue=3), deadline=5, clock=FakeClock())
    gate.enter()
    woken: list[int] = []
    waiters = [gate.enter(lambda i=i: woken.append(i)) for i in range(3)]
    gate.close()
    assert woken == [0, 1, 2] and all(t.state is State.DROPPED for t in waiters)


def test_from_settings_takes_one_limit_per_kind() -> None:
    settings = Settings(
        request_deadline=2.5, search_workers=3, search_queue=7, rerank_workers=1, rerank_queue=0
    )
    admission = Admission.from_settings(settings)
    assert admission.gates[Kind.SEARCH].limit == Limit(3, 7)
    assert admission.gates[Kind.RERANK].limit == Limit(1, 0)
    assert {g.deadline for g in admission.gates.values()} == {2.5}
    assert set(admission.gates) == set(Kind)


# ------------------------------------------------------------------ the async layer


def _admission(clock: FakeClock | None = None, *, workers: int = 1, queue: int = 4) -> Admission:
    limits = {kind: Limit(workers, queue) for kind in Kind}
    if clock is None:
        return Admission(limits, deadline=30)
    return Admission(limits, deadline=5, clock=clock)


def _run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro())  # type: ignore[arg-type]


class Held:
    """A blocking work function: records that it started, returns once released."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> str:
        self.started.set()
        assert self.release.wait(10)
        return self.value


async def _until(event: threading.Event) -> None:
    for _ in range(10_000):
        if event.is_set():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("never happened")


def test_admitted_work_runs_on_a_thread_in_order_and_never_more_than_the_workers() -> None:
    admission = _admission(workers=1, queue=4)
    order: list[str] = []

    async def main() -> list[str]:
        first = Held("a")
        task_a = asyncio.create_task(admission.run(Kind.SEARCH, first))
        await _until(first.started)
        task_b = asyncio.create_task(admission.run(Kind.SEARCH, lambda: order.append("b") or "b"))
        task_c = asyncio.create_task(admission.run(Kind.SEARCH, lambda: order.append("c") or "c"))
        await asyncio.sleep(0)
        gate = admission.gates[Kind.SEARCH]
        for _ in range(100):
            if gate.waiting == 2:
                break
            await asyncio.sleep(0.001)
        assert (gate.running, gate.waiting, order) == (1, 2, [])
        # Another kind has its own slots: not held up by the search backlog.
        assert await admission.run(Kind.EMBEDDINGS, lambda: "e") == "e"
        first.release.set()
        return list(await asyncio.gather(task_a, task_b, task_c))

    assert _run(main) == ["a", "b", "c"] and order == ["b", "c"]
    assert admission.gates[Kind.SEARCH].running == 0


def test_queued_work_of_a_disconnected_client_is_never_run() -> None:
    admission = _admission(workers=1, queue=4)
    ran: list[str] = []

    async def main() -> None:
        holder = Held("a")
        task_a = asyncio.create_task(admission.run(Kind.RERANK, holder))
        await _until(holder.started)
        left = asyncio.Event()

        async def disconnected() -> None:
            await left.wait()

        task_b = asyncio.create_task(
            admission.run(Kind.RERANK, lambda: ran.append("b"), disconnected=disconnected)
        )
        await asyncio.sleep(0.01)
        assert admission.gates[Kind.RERANK].waiting == 1
        left.set()
        with pytest.raises(Abandoned):
            await task_b
        holder.release.set()
        assert await task_a == "a"

    _run(main)
    assert ran == []
    snap = admission.gates[Kind.RERANK].snapshot()
    assert (snap.running, snap.waiting, snap.abandoned) == (0, 0, 1)


def test_work_that_cannot_start_before_its_deadline_is_dropped_with_429() -> None:
    clock = FakeClock()
    admission = _admission(clock, workers=2, queue=4)
    gate = admission.gates[Kind.SEARCH]
    measured = gate.enter()
    clock.advance(2.0)  # 2 s a run, 2 workers: a first waiter expects 1 s + 2 s, gives up at 3 s
    gate.leave(measured)
    ran: list[str] = []

    async def main() -> None:
        holders = [Held("a"), Held("b")]
        tasks = [asyncio.create_task(admission.run(Kind.SEARCH, h)) for h in holders]
        for holder in holders:
            await _until(holder.started)
        clock.tick = 3.5  # every later reading is 3.5 s on: the waiter's time is up at once
        with pytest.raises(Overloaded) as info:
            await admission.run(Kind.SEARCH, lambda: ran.append("late"))
        assert "could no longer be answered" in info.value.message
        assert info.value.retry_after >= 1
        clock.tick = 0.0
        for holder in holders:
            holder.release.set()
        await asyncio.gather(*tasks)

    _run(main)
    assert ran == [] and gate.expired == 1 and gate.running == 0 and gate.waiting == 0


def test_a_cancelled_caller_keeps_its_slot_until_its_thread_is_done() -> None:
    admission = _admission(workers=1, queue=4)

    async def main() -> None:
        holder = Held("a")
        task = asyncio.create_task(admission.run(Kind.INGEST, holder))
        await _until(holder.started)
        task.cancel()
        await asyncio.sleep(0.01)
        assert admission.gates[Kind.INGEST].running == 1  # the thread still runs
        with pytest.raises(asyncio.CancelledError):
            await task
        assert admission.gates[Kind.INGEST].running == 1  # the caller is gone, not its thread
        holder.release.set()
        for _ in range(10_000):
            if admission.gates[Kind.INGEST].running == 0:
                break
            await asyncio.sleep(0.001)
        assert admission.gates[Kind.INGEST].running == 0

    _run(main)


def test_a_varying_service_time_plans_for_its_spread() -> None:
    """Runs of 1 s and 3 s: the mean alone would let a request start when only the mean is
    left before its deadline and end past it; the plan adds twice the spread."""
    clock = FakeClock()
    gate = Gate(Kind.RERANK, Limit(workers=1, queue=10), deadline=10, clock=clock, smoothing=0.5)
    for took in (1.0, 3.0, 1.0, 3.0):
        ticket = gate.enter()
        clock.advance(took)
        gate.leave(ticket)
    assert gate.service_seconds is not None and gate.service_spread > 0.5
    planned = gate.planned_service()
    assert planned == pytest.approx(gate.service_seconds + 2 * gate.service_spread)
    running = gate.enter()
    waiting = gate.enter()
    assert waiting.state is State.WAITING
    assert waiting.give_up == pytest.approx(clock.now + 10 - planned)
    assert waiting.give_up < clock.now + 10 - gate.service_seconds
    gate.leave(running)


def test_one_slow_recent_run_is_planned_for() -> None:
    """The plan covers the slowest of the last runs: a request that starts at its last moment
    ends by the deadline unless it is slower than all of them."""
    clock = FakeClock()
    gate = Gate(Kind.RERANK, Limit(workers=1, queue=10), deadline=10, clock=clock, smoothing=0.1)
    for took in [1.0] * 10 + [4.0] + [1.0] * 5:
        ticket = gate.enter()
        clock.advance(took)
        gate.leave(ticket)
    assert gate.service_seconds is not None
    assert gate.service_seconds + 2 * gate.service_spread < 4.0
    assert gate.planned_service() == pytest.approx(4.0)
    for _ in range(16):  # the slow run leaves the window
        ticket = gate.enter()
        clock.advance(1.0)
        gate.leave(ticket)
    assert gate.planned_service() < 2.0


def test_waiters_queued_before_any_measurement_are_planned_again_by_the_first_run() -> None:
    """At the start of a burst nothing is measured: the queue's give-up times assume instant
    runs. The first measured run moves them up, and those that can no longer finish in time
    are dropped then, not at the deadline."""
    clock = FakeClock()
    gate = Gate(Kind.RERANK, Limit(workers=1, queue=10), deadline=5, clock=clock)
    running = gate.enter()
    early = gate.enter()
    assert early.give_up == pytest.approx(clock.now + 5)  # nothing known yet
    clock.advance(3.0)
    late = gate.enter()  # 3 s in: may start until 3 + 5 s
    gate.leave(running)  # measured: a run takes 3 s
    # `early` came at 0 and would end at 3 + 3 = 6 s, past its 5 s: dropped now (with the old
    # plan it would have run); `late` came at 3 and can end at 6 < 8: it gets the slot.
    assert early.state is State.DROPPED
    assert late.state is State.RUNNING
    assert late.give_up == pytest.approx(late.arrived + 5 - 3)
    gate.leave(late)


def test_running_work_is_told_when_its_client_leaves() -> None:
    """Work that already runs cannot be stopped from outside its thread; ``gone`` is set so it
    can skip what is left (a search skips its rerank)."""
    admission = _admission(workers=1, queue=4)
    gone = threading.Event()
    seen: list[bool] = []

    async def main() -> None:
        left = asyncio.Event()
        holder = Held("a")

        def work() -> str:
            value = holder()
            seen.append(gone.is_set())
            return value

        async def disconnected() -> None:
            await left.wait()

        task = asyncio.create_task(
            admission.run(Kind.RERANK, work, disconnected=disconnected, gone=gone)
        )
        await _until(holder.started)
        assert not gone.is_set()
        left.set()
        await _until(gone)
        holder.release.set()
        assert await task == "a"

    _run(main)
    assert seen == [True]
    assert admission.gates[Kind.RERANK].running == 0
