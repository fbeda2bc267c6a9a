"""Cancellation shared by the pipeline's worker threads: one scope, stoppable from another thread.

A worker enters a ``CancelScope`` around its task; anything that blocks inside it — a registry
socket read or write, a backoff sleep, an mkfs.erofs child process — registers an abort
callback for as long as it blocks. ``cancel()`` (Ctrl-C, or a failure elsewhere in the graph)
runs every callback at once, so the pipeline stops promptly instead of waiting out a stalled
transfer or a long compression. Kept out of the registry and erofs packages so both can use
it without importing each other. ``Completions``: waiting for a pool's tasks in a thread that a
signal may interrupt.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from converter.errors import Cancelled

CancelError = Callable[[str], BaseException]
T = TypeVar("T")


class CancelScope:
    """Lets one thread stop the registry I/O of the threads that entered this scope.

    A thread enters the scope (``with scope.entered():``) around its work; blocking operations
    inside register an abort callback for as long as they block (``with scope.blocking(fn):``).
    ``cancel()`` marks the scope cancelled, calls every registered callback (for a socket: shut
    it down, which ends a ``recv``/``send`` blocked in another thread at once; closing it would
    not) and wakes ``wait``. The lock makes registration and cancellation atomic, so a callback
    never runs after its operation finished (and the socket may have been closed and its file
    descriptor reused).
    """

    def __init__(self, *, parent: CancelScope | None = None) -> None:
        """``parent``: cancelling that scope cancels this one too (a mirror run's scope over the
        scope of each image's layer graph)."""
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._aborts: dict[object, Callable[[], None]] = {}
        self._children: weakref.WeakSet[CancelScope] = weakref.WeakSet()
        if parent is not None:
            parent._adopt(self)

    def _adopt(self, child: CancelScope) -> None:
        with self._lock:
            if not self._event.is_set():
                self._children.add(child)
                return
        child.cancel()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        """Cancel: abort every registered blocking operation and wake sleepers. Idempotent."""
        with self._lock:
            self._event.set()
            for abort in self._aborts.values():
                abort()
            children = list(self._children)
        for child in children:
            child.cancel()

    @contextlib.contextmanager
    def entered(self) -> Iterator[CancelScope]:
        """Make this the current thread's scope for the duration of the block."""
        token = _CURRENT_SCOPE.set(self)
        try:
            yield self
        finally:
            _CURRENT_SCOPE.reset(token)

    @contextlib.contextmanager
    def blocking(self, abort: Callable[[], None], what: str = "",
                 error: CancelError = Cancelled) -> Iterator[None]:
        """Register ``abort`` (which must not block) while the block runs; ``error`` at once if
        the scope is cancelled already."""
        key = object()
        with self._lock:
            if self._event.is_set():
                raise error(_cancelled_message(what))
            self._aborts[key] = abort
        try:
            yield
        finally:
            with self._lock:
                del self._aborts[key]

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (early) if the scope is or gets cancelled."""
        return self._event.wait(seconds)

    def check(self, what: str = "", error: CancelError = Cancelled) -> None:
        """Raise ``error`` if the scope is cancelled."""
        if self._event.is_set():
            raise error(_cancelled_message(what))


_CURRENT_SCOPE: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar("cancel_scope", default=None)


def _cancelled_message(what: str) -> str:
    return f"{what}: cancelled" if what else "cancelled"


def current_scope() -> CancelScope | None:
    """The ``CancelScope`` the calling thread entered, if any."""
    return _CURRENT_SCOPE.get()


class Completions(Generic[T]):
    """Outcomes of tasks run in a thread pool, for a thread that a signal may interrupt anywhere.

    The CLI's SIGTERM/SIGINT handler raises ``KeyboardInterrupt`` in the main thread at whatever
    point it runs. ``concurrent.futures.wait`` takes every future's lock in turn while it waits:
    interrupted in between, it leaves some of them held, and the worker that finishes such a
    future then blocks for ever in ``set_result`` — and the pool's ``shutdown(wait=True)`` with it
    (``convert mirror`` hung once in about 150 SIGTERMs while planning). Here each task hands its
    outcome to a ``queue.SimpleQueue``, whose ``get`` is one C call that a signal interrupts
    cleanly, and the waiting thread never takes a future's lock.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int, T | None, BaseException | None]] = queue.SimpleQueue()
        self.pending = 0  # submitted, outcome not yet taken

    def submit(self, pool: ThreadPoolExecutor, key: int, fn: Callable[[], T]) -> None:
        """Run ``fn`` in ``pool``; its outcome comes back from ``next`` with ``key`` (never, for a
        task that a ``shutdown(cancel_futures=True)`` kept from starting)."""
        self.pending += 1
        pool.submit(self._run, key, fn)

    def _run(self, key: int, fn: Callable[[], T]) -> None:
        try:
            value = fn()
        except BaseException as exc:  # handed to the waiting thread, which raises it
            self._queue.put((key, None, exc))
        else:
            self._queue.put((key, value, None))

    def next(self, timeout: float | None) -> tuple[int, T] | None:
        """The next finished task's key and value, or None if none finished within ``timeout``
        seconds (0: do not wait). A task's exception is raised here."""
        try:
            if timeout is None:
                key, value, exc = self._queue.get()
            elif timeout <= 0:
                key, value, exc = self._queue.get_nowait()
            else:
                key, value, exc = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        self.pending -= 1
        if exc is not None:
            raise exc
        return key, value  # type: ignore[return-value]  # the task returned a T
