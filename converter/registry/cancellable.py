"""Prompt cancellation of blocked registry reads and writes: a patch over httpx/httpcore internals.

Every socket of the client's connection pools goes through ``_CancellableBackend``: while a
thread that entered a ``CancelScope`` (converter.cancel) blocks reading or writing one,
cancelling the scope shuts that socket down, so a pipeline stops at once instead of waiting
for a stalled registry's read timeout. Isolated here because it reaches into private
attributes: if they move, requests work as before and only prompt cancellation is lost.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import httpcore
import httpx

from converter.cancel import current_scope
from converter.registry.retry import RequestCancelled, check_cancelled

T = TypeVar("T")

#: Bytes a read of a connection may return. httpcore asks for 64 KiB at a time; a blob of a few
#: hundred MB is then thousands of trips through h11 and httpx, each taking the GIL (which the
#: builds running meanwhile hold most of the time). End to end on the bench image over plain HTTP
#: on loopback (alternating, medians): ``erofs+lz4`` 5.50 -> 5.12 s, raw 4.61 -> 4.36 s. Over TLS,
#: where one ``recv`` returns one record (16 KiB), a read takes the records at hand: pulling a
#: 210 MB blob from a TLS registry on loopback took 0.47-0.64 CPU seconds, now 0.42-0.45.
READ_SIZE = 1 << 20


class _CancellableStream(httpcore.NetworkStream):
    """A connection whose blocking reads and writes the calling thread's ``CancelScope`` can end.

    While a read or write blocks, the scope holds a callback that shuts the socket down; a
    ``recv``/``send`` blocked in another thread returns at once (closing the socket would not
    wake it), and the operation raises ``RequestCancelled`` instead of a network error that
    would be retried. httpcore then closes the connection, as after any failed read.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self._sock = inner.get_extra_info("socket")  # a TLS connection is a new stream (start_tls)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Up to ``READ_SIZE`` bytes when httpcore asks for fewer: whatever the socket has (its
        HTTP/1.1 parser takes any amount of data per read). Over TLS a ``recv`` returns one
        record (16 KiB) at most, so the records that are already there are taken too."""
        want = max(max_bytes, READ_SIZE)

        def read() -> bytes:
            data = self._inner.read(want, timeout)
            if data and len(data) < want and isinstance(self._sock, ssl.SSLSocket):
                data = _records_at_hand(self._sock, data, want, timeout)
            return data

        return self._guarded(read)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._guarded(lambda: self._inner.write(buffer, timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _CancellableStream(self._guarded(lambda: self._inner.start_tls(ssl_context, server_hostname,
                                                                              timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def _guarded(self, operation: Callable[[], T]) -> T:
        scope = current_scope()
        if scope is None:
            return operation()
        try:
            with scope.blocking(lambda: _shutdown(self._sock), "registry connection", RequestCancelled):
                result = operation()
        except Exception as exc:
            if scope.cancelled and not isinstance(exc, RequestCancelled):
                raise RequestCancelled("registry connection: cancelled") from exc
            raise
        # A socket shut down mid-read reads as a clean EOF: do not hand that to httpcore as data.
        scope.check("registry connection", RequestCancelled)
        return result


def _records_at_hand(sock: ssl.SSLSocket, first: bytes, want: int, timeout: float | None) -> bytes:
    """``first`` and what more of the TLS stream can be read at once, up to ``want`` bytes: the
    records already received whole, without waiting for more. An error is left for the next
    read to meet (``first`` is data the caller must get)."""
    parts = [first]
    got = len(first)
    try:
        sock.setblocking(False)
        while got < want:
            try:
                more = sock.recv(want - got)
            except OSError:  # nothing whole at hand (SSLWantReadError is one), or a failure
                break
            if not more:
                break
            parts.append(more)
            got += len(more)
    finally:
        sock.settimeout(timeout)
    return b"".join(parts)  # ``first`` itself when nothing more came


def _shutdown(sock: object) -> None:
    """Shut ``sock`` down in both directions, waking any thread blocked on it.

    The plain ``socket.socket`` method, also for an ``SSLSocket`` (whose override would drop
    the TLS object under the thread using it); closing is left to the socket's owner.
    """
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _CancellableBackend(httpcore.NetworkBackend):
    """httpcore's network backend with every connection wrapped in ``_CancellableStream``.

    Connecting itself is not interruptible (there is no socket to shut down until it is
    connected); it is bounded by the short connect timeout.
    """

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        check_cancelled("registry connection")
        return _CancellableStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        check_cancelled("registry connection")
        return _CancellableStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def make_cancellable(http: httpx.Client) -> bool:
    """Put ``_CancellableBackend`` under every connection pool of ``http``; False if one was missed.

    httpx has no public way to choose httpcore's network backend, so this reaches into its
    transports (the direct one and those it mounted for proxies from the environment) and
    their pools' ``_network_backend``, which httpcore reads whenever it opens a connection.
    Everything is checked first: if a future httpx or httpcore moves these, requests work as
    before and only prompt cancellation is lost (tests/pipeline/test_cancel.py notices).
    """
    transports = [getattr(http, "_transport", None), *getattr(http, "_mounts", {}).values()]
    complete = True
    for transport in transports:
        if transport is None:  # a mount of None: no proxy for those URLs
            continue
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(pool, httpcore.ConnectionPool) or not isinstance(backend, httpcore.NetworkBackend):
            complete = False
        elif not isinstance(backend, _CancellableBackend):
            pool._network_backend = _CancellableBackend(backend)
    return complete
