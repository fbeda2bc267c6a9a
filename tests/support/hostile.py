"""A hostile registry for tests: a loopback HTTP server in front of a real registry that answers
chosen requests itself (a tag list with invalid tags, ...) and forwards the rest unchanged.

``HostileRegistry(upstream)`` listens on ``127.0.0.1:PORT`` (loopback, so the client speaks
plain HTTP to it) and forwards every request to the real registry at ``upstream``, keeping the
``Host`` header so that ``Location`` headers point back at it. ``answer(pattern, reply)`` makes
every request whose ``METHOD PATH?QUERY`` matches the regular expression ``pattern`` get
``reply`` instead (``reply`` may also be a function of the ``PATH?QUERY`` returning one, for
answers that change: endless pagination). A ``Reply`` with ``dribble`` sends its body one byte
at a time, that many seconds apart. ``seen`` records ``(method, path)`` of every request.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailers", "transfer-encoding", "upgrade", "content-length"})


@dataclass(frozen=True)
class Reply:
    """What the hostile registry answers instead of the real one."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    dribble: float = 0.0  # seconds between body bytes (0: all at once)

    @staticmethod
    def json(value: object, status: int = 200) -> Reply:
        return Reply(status, json.dumps(value).encode())


@dataclass
class HostileRegistry:
    """A threaded loopback server in front of ``upstream``; use as a context manager."""

    upstream: str
    rules: list[tuple[re.Pattern[str], Reply | Callable[[str], Reply]]] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-registry", daemon=True)

    @property
    def host(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def answer(self, pattern: str, reply: Reply | Callable[[str], Reply]) -> None:
        """Answer requests matching ``pattern`` (searched in ``METHOD PATH?QUERY``) with ``reply``."""
        with self.lock:
            self.rules.append((re.compile(pattern), reply))

    def pick(self, method: str, path: str) -> Reply | None:
        with self.lock:
            self.seen.append((method, path.split("?", 1)[0]))
            for pattern, reply in self.rules:
                if pattern.search(f"{method} {path}"):
                    return reply if isinstance(reply, Reply) else reply(path)
        return None

    def count(self, method: str, path_pattern: str) -> int:
        """How many ``method`` requests had a path matching ``path_pattern``."""
        with self.lock:
            return sum(1 for m, p in self.seen if m == method and re.search(path_pattern, p))

    def __enter__(self) -> HostileRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _handler_for(registry: HostileRegistry) -> type[http.server.BaseHTTPRequestHandler]:
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

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _handle(self) -> None:
            body = self._body()
            reply = registry.pick(self.command, self.path)
            if reply is not None:
                self._send(reply.status, list(reply.headers), reply.body, reply.dribble)
                return
            conn = http.client.HTTPConnection(registry.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body or self.command not in ("GET", "HEAD", "DELETE"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                if self.command == "HEAD" and response.getheader("Content-Length") is not None:
                    kept.append(("Content-Length", response.getheader("Content-Length", "")))
                self._send(response.status, kept, payload)
            finally:
                conn.close()

        def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes, dribble: float = 0.0) -> None:
            self.send_response_only(status)
            for key, value in headers:
                self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD" and dribble:
                for i in range(len(payload)):
                    self.wfile.write(payload[i : i + 1])
                    self.wfile.flush()
                    time.sleep(dribble)
            elif self.command != "HEAD":
                self.wfile.write(payload)

    return Handler
