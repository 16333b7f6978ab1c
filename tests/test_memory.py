"""The trimmer gives freed heap back once requests stop, on its own thread, once per burst."""

from __future__ import annotations

import threading

from ragserve.memory import Trimmer, trim_soon


def test_a_burst_of_requests_trims_once_after_it() -> None:
    ran = threading.Event()
    calls: list[str] = []

    def trim() -> None:
        calls.append(threading.current_thread().name)
        ran.set()

    trimmer = Trimmer(trim, delay=0.05)
    for _ in range(100):  # one burst: each request pushes the trim back
        trimmer.request()
    assert ran.wait(30)
    assert calls[0] == "ragserve-trim"  # never on the caller's thread
    ran.clear()
    trimmer.request()
    assert ran.wait(30) and len(calls) >= 2  # a later burst trims again


def test_without_a_trim_function_nothing_runs() -> None:
    trimmer = Trimmer(None)
    trimmer.request()
    assert trimmer._thread is None


def test_the_process_trimmer_can_be_asked_from_any_thread() -> None:
    threads = [threading.Thread(target=trim_soon) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
