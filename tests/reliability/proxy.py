"""A fault-injecting HTTP proxy in front of a real registry, for the registry-fault tests.

``FaultProxy(upstream)`` listens on a loopback port and forwards every request to the
registry at ``upstream`` (``127.0.0.1:PORT``), keeping the ``Host`` header, so the
registry's ``Location`` headers point back at the proxy and upload sessions go through it
too. Scripted ``Fault`` rules pick requests by method and path and break them in one of the
ways networks and registries break:

* ``RESET_RESPONSE``: forward, send the headers and part of the body, then a TCP reset;
* ``RESET_REQUEST``: read part of the request body (an upload), then reset; nothing reaches
  the registry;
* ``STATUS``: answer with an error status (``retry_after`` optional) instead of forwarding;
* ``STALL``: send part of the body, pause ``stall`` seconds (a slow server), send the rest;
* ``SHORT``: announce the full Content-Length, send less, close cleanly;
* ``CORRUPT``: flip one byte of the body (a blob whose bytes do not match its digest).

A rule fires ``times`` times (``None``: always), after letting ``skip`` matching requests
through. Everything the proxy sees is recorded in ``log`` for assertions. The proxy is our
own code on purpose: no tool between the converter and the registry may retry or repair.
"""

from __future__ import annotations

import contextlib
import enum
import http.client
import http.server
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailers", "transfer-encoding", "upgrade", "content-length"})


class Action(enum.Enum):
    """What a fault does to a matching request."""

    RESET_RESPONSE = "reset-response"
    RESET_REQUEST = "reset-request"
    STATUS = "status"
    STALL = "stall"
    SHORT = "short"
    CORRUPT = "corrupt"


@dataclass
class Fault:
    """One scripted fault. ``path`` is a regular expression searched in the request path (with
    its query); ``method`` None matches every method."""

    action: Action
    path: str
    method: str | None = None
    times: int | None = 1
    skip: int = 0
    status: int = 500
    retry_after: str | None = None
    fraction: float = 0.5  # share of the body that gets through before the fault
    stall: float = 0.0
    code: str = "UNKNOWN"  # the registry error code in a STATUS answer's JSON body
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def take(self, method: str, path: str) -> bool:
        """True if this request should get the fault (counts matches; call under the lock)."""
        if self.method is not None and method != self.method:
            return False
        if not re.search(self.path, path):
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class Seen:
    """One request as the proxy handled it."""

    method: str
    path: str
    status: int  # what the client was sent (0 if the connection was reset first)
    fault: str  # the action applied, or ""
    size: int = 0  # body bytes the upstream answered with (what a byte count of the transfer sees)


class FaultProxy:
    """A threaded loopback proxy to ``upstream`` with scriptable faults; use as a context manager."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.log: list[Seen] = []
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` of the proxy."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @contextlib.contextmanager
    def scripted(self, faults: Sequence[Fault]) -> Iterator[list[Fault]]:
        """Apply ``faults`` inside the block (and clear the request log first)."""
        with self.lock:
            self.faults = list(faults)
            self.log.clear()
        try:
            yield self.faults
        finally:
            with self.lock:
                self.faults = []

    def pick(self, method: str, path: str) -> Fault | None:
        """The first rule that fires for this request."""
        with self.lock:
            for fault in self.faults:
                if fault.take(method, path):
                    return fault
        return None

    def record(self, method: str, path: str, status: int, fault: Fault | None, size: int = 0) -> None:
        with self.lock:
            self.log.append(Seen(method, path, status, fault.action.value if fault else "", size))

    def wait_for(self, predicate: object, timeout: float = 20.0) -> Seen:
        """Block until a logged request satisfies ``predicate(seen)``; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for seen in self.log:
                    if callable(predicate) and predicate(seen):
                        return seen
            time.sleep(0.02)
        raise TimeoutError("the proxy never saw the awaited request")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Connections we reset on purpose raise in the handler's cleanup: stay quiet."""


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN: a dropped connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _handler_for(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Silent: the test output is for the converter."""

        def finish(self) -> None:
            with contextlib.suppress(OSError, ValueError):
                super().finish()

        def do_GET(self) -> None:
            self._handle()

        do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        # -- request side ---------------------------------------------------------------

        def _read_body(self, fault: Fault | None) -> bytes | None:
            """The request body; None if a RESET_REQUEST fault cut the connection."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = self._read_chunked()
            else:
                length = int(self.headers.get("Content-Length") or 0)
                if fault is not None and fault.action is Action.RESET_REQUEST:
                    self.rfile.read(int(length * fault.fraction))
                    self._drop(fault)
                    return None
                body = self.rfile.read(length) if length else b""
            if fault is not None and fault.action is Action.RESET_REQUEST:
                self._drop(fault)
                return None
            return body

        def _read_chunked(self) -> bytes:
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()

        def _drop(self, fault: Fault | None) -> None:
            proxy.record(self.command, self.path, 0, fault)
            self.close_connection = True
            _reset(self.connection)

        # -- the exchange ---------------------------------------------------------------

        def _handle(self) -> None:
            fault = proxy.pick(self.command, self.path)
            body = self._read_body(fault)
            if body is None:
                return
            if fault is not None and fault.action is Action.STATUS:
                self._answer_status(fault)
                return
            try:
                status, reason, headers, payload = self._forward(body)
            except OSError as exc:
                self._send(502, "Bad Gateway", [("Content-Type", "text/plain")], str(exc).encode(), None)
                return
            self._send(status, reason, headers, payload, fault)

        def _answer_status(self, fault: Fault) -> None:
            body = json.dumps({"errors": [{"code": fault.code, "message": "injected by the fault proxy"}]}).encode()
            headers = [("Content-Type", "application/json")]
            if fault.retry_after is not None:
                headers.append(("Retry-After", fault.retry_after))
            self._send(fault.status, http.client.responses.get(fault.status, "Error"), headers, body, None,
                       applied=fault)

        def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                if self.command in ("GET", "HEAD", "DELETE") and not body:
                    del headers["Content-Length"]
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                if self.command == "HEAD":
                    length = response.getheader("Content-Length")
                    if length is not None:
                        kept.append(("Content-Length", length))
                return response.status, response.reason, kept, payload
            finally:
                conn.close()

        def _send(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes,
                  fault: Fault | None, *, applied: Fault | None = None) -> None:
            action = fault.action if fault is not None else None
            if action is Action.CORRUPT and payload:
                flipped = bytearray(payload)
                flipped[len(flipped) // 2] ^= 0xFF
                payload = bytes(flipped)
            self.send_response_only(status, reason)
            for key, value in headers:
                self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            proxy.record(self.command, self.path, status, fault or applied,
                         0 if self.command == "HEAD" else len(payload))
            if self.command == "HEAD":
                return
            cut = int(len(payload) * fault.fraction) if fault is not None else len(payload)
            if action is Action.RESET_RESPONSE:
                self.wfile.write(payload[:cut])
                self.wfile.flush()
                time.sleep(0.05)  # let the bytes leave before the reset discards the send queue
                self.close_connection = True
                _reset(self.connection)
            elif action is Action.SHORT:
                self.wfile.write(payload[: max(0, len(payload) - max(1, len(payload) // 10))])
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_WR)
            elif action is Action.STALL:
                self.wfile.write(payload[:cut])
                self.wfile.flush()
                time.sleep(fault.stall if fault is not None else 0)
                with contextlib.suppress(OSError):
                    self.wfile.write(payload[cut:])
            else:
                self.wfile.write(payload)

    return Handler
