"""MicroBatcher: results per caller, shared work between workers, bounded admission."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from ragserve.batching import MicroBatcher
from ragserve.errors import Overloaded
from tests.fakes import wait_until


class GatedDouble:
    """``run`` doubles numbers; it blocks until the gate opens and records each batch."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[list[int]] = []
        self.inside = 0
        self._lock = threading.Lock()

    def __call__(self, items: Sequence[int]) -> list[int]:
        with self._lock:
            self.inside += 1
            self.batches.append(list(items))
        self.gate.wait(10)
        return [2 * x for x in items]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_share_what_waits_and_each_caller_gets_its_slice(workers: int) -> None:
    run = GatedDouble()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, workers=workers, max_batch=64)
    try:
        held = [batcher.submit([100 + i]) for i in range(workers)]
        wait_until(lambda: run.inside == workers)  # every worker holds one job
        waiting = [batcher.submit([i, i + 1000]) for i in range(12)]
        assert batcher.pending == workers + 24
        run.gate.set()
        assert [f.result(10) for f in held] == [[200 + 2 * i] for i in range(workers)]
        assert [f.result(10) for f in waiting] == [[2 * i, 2 * i + 2000] for i in range(12)]
    finally:
        run.gate.set()
        batcher.close()
    later = [len(b) for b in run.batches[workers:]]
    assert sum(later) == 24
    # One worker takes all 12 waiting jobs at once; several take a share each (at most
    # ceil(12 / workers) jobs of two items), so no caller waits for every other one's run.
    assert max(later) == 2 * -(-12 // workers)
    assert batcher.pending == 0 and batcher.stats.items == 2 * 12 + workers


def test_a_full_queue_is_refused_at_once() -> None:
    run = GatedDouble()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_pending=4)
    try:
        first = batcher.submit([1])
        wait_until(lambda: run.inside == 1)
        second = batcher.submit([2, 3, 4])
        with pytest.raises(Overloaded) as info:
            batcher.submit([5])
        assert info.value.retry_after == 1.0 and batcher.stats.rejected == 1
        run.gate.set()
        assert first.result(10) == [2] and second.result(10) == [4, 6, 8]
    finally:
        run.gate.set()
        batcher.close()


class FailsOnNegative(GatedDouble):
    """Doubles numbers, but a batch holding a negative one fails as a whole (as a model call
    does when one of its inputs cannot be encoded)."""

    def __call__(self, items: Sequence[int]) -> list[int]:
        out = super().__call__(items)
        if any(x < 0 for x in items):
            raise ValueError("negative input")
        return out


def test_a_failing_batch_fails_only_the_callers_whose_input_fails_alone() -> None:
    run = FailsOnNegative()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, workers=1, max_batch=64)
    try:
        held = batcher.submit([0])
        wait_until(lambda: run.inside == 1)  # the next three wait, then run as one batch
        good, bad, other = batcher.submit([1, 2]), batcher.submit([-1]), batcher.submit([3])
        run.gate.set()
        assert held.result(10) == [0]
        assert good.result(10) == [2, 4] and other.result(10) == [6]
        with pytest.raises(ValueError, match="negative input"):
            bad.result(10)
        assert [1, 2, -1, 3] in run.batches, "they were batched together first"
        assert [-1] in run.batches and [1, 2] in run.batches, "then each ran alone"
    finally:
        run.gate.set()
        batcher.close()
