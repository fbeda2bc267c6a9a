"""``converter.cancel.Completions``: a pool's outcomes for a thread that signals interrupt anywhere."""

from __future__ import annotations

import functools
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from converter.cancel import Completions


def test_outcomes_come_back_by_key() -> None:
    done: Completions[str] = Completions()
    gate = threading.Event()
    with ThreadPoolExecutor(3) as pool:
        for n in range(3):
            done.submit(pool, n, lambda n=n: (gate.wait(5), f"v{n}")[1])  # type: ignore[misc]
        assert done.pending == 3
        assert done.next(0) is None and done.next(0.05) is None  # nothing finished yet
        gate.set()
        got = sorted(done.next(None) for _ in range(3))  # type: ignore[type-var]
    assert got == [(0, "v0"), (1, "v1"), (2, "v2")]
    assert done.pending == 0


def test_a_tasks_exception_is_raised_by_next() -> None:
    done: Completions[int] = Completions()

    def bad() -> int:
        raise ValueError("a bug in the task")

    with ThreadPoolExecutor(1) as pool:
        done.submit(pool, 7, bad)
        with pytest.raises(ValueError, match="a bug in the task"):
            done.next(5)
    assert done.pending == 0


def _nap(n: int) -> int:
    time.sleep(0.0002)
    return n


@pytest.mark.timeout(60)
def test_an_interrupt_while_waiting_never_blocks_the_workers() -> None:
    """A KeyboardInterrupt raised by a signal handler while the main thread waits, at whatever
    point it lands (a timer fires every 50 us), leaves every worker free to finish: the pool's
    shutdown returns. (``concurrent.futures.wait`` in this loop hangs in the shutdown within a
    few hundred rounds: an interrupt inside it leaves a future's lock held.)"""
    fired, armed = 0, False

    def handler(signum: int, frame: Any) -> None:
        nonlocal fired, armed
        if armed:  # once per round, like the CLI's handler (a second signal kills)
            armed = False
            fired += 1
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        for _ in range(300):
            done: Completions[int] = Completions()
            pool = ThreadPoolExecutor(4)
            for n in range(40):
                done.submit(pool, n, functools.partial(_nap, n))
            try:
                armed = True
                signal.setitimer(signal.ITIMER_REAL, 0.00005, 0.00005)
                while done.pending:
                    done.next(0.01)
            except KeyboardInterrupt:
                pass
            finally:
                armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            finished = threading.Event()
            threading.Thread(target=lambda p=pool, f=finished: (p.shutdown(wait=True), f.set()), daemon=True).start()
            assert finished.wait(10), "a worker is blocked: the pool did not shut down"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired > 0
