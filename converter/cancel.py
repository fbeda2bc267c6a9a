"""Cancellation shared by the pipeline's worker threads: one scope, stoppable from another thread.

A worker enters a ``CancelScope`` around its task; anything that blocks inside it — a registry
socket read or write, a backoff sleep, an mkfs.erofs child process — registers an abort
callback for as long as it blocks. ``cancel()`` (Ctrl-C, or a failure elsewhere in the graph)
runs every callback at once, so the pipeline stops promptly instead of waiting out a stalled
transfer or a long compression. Kept out of the registry and erofs packages so both can use
it without importing each other.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Callable, Iterator

from converter.errors import Cancelled

CancelError = Callable[[str], BaseException]


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
