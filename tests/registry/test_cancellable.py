"""The httpx/httpcore cancellation patch (cancellable.py): it reaches the pools it must, and says when it cannot;
its connections read up to READ_SIZE bytes at a time.

Prompt cancellation itself (a blocked read ends when the scope is cancelled) is tested end to
end in tests/pipeline/test_cancel.py.
"""

from __future__ import annotations

import http.server
import os
import threading

import httpx

from converter.registry.cancellable import READ_SIZE, _CancellableBackend, _CancellableStream, make_cancellable


def test_every_pool_of_a_client_gets_the_cancellable_backend() -> None:
    with httpx.Client(mounts={"http://proxied.example": httpx.HTTPTransport()}) as http:
        assert make_cancellable(http)
        pools = [http._transport._pool, *(t._pool for t in http._mounts.values()  # type: ignore[attr-defined]
                                          if t is not None)]
        assert len(pools) == 2
        assert all(isinstance(p._network_backend, _CancellableBackend) for p in pools)
        assert make_cancellable(http)  # idempotent: not wrapped twice
        assert not isinstance(pools[0]._network_backend._inner, _CancellableBackend)


def test_an_unknown_transport_is_reported_not_patched() -> None:
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as http:
        assert not make_cancellable(http)
        assert http.get("http://x.example/").status_code == 200


class _Recorder:
    """An inner network stream that records what each read asks for."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.asked.append(max_bytes)
        return b"x"

    def get_extra_info(self, info: str) -> None:
        return None


def test_a_connection_reads_up_to_a_mebibyte_at_a_time() -> None:
    inner = _Recorder()
    stream = _CancellableStream(inner)  # type: ignore[arg-type]
    stream.read(64 * 1024)
    stream.read(4 << 20)
    assert inner.asked == [READ_SIZE, 4 << 20]
    assert READ_SIZE == 1 << 20


def test_a_body_arrives_in_pieces_bigger_than_httpcores_reads() -> None:
    """Over a real loopback socket, a 16 MiB answer reaches httpx in pieces of more than the
    64 KiB httpcore asks for (the server writes it at once), and every byte arrives."""
    body = os.urandom(1 << 20) * 16

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with httpx.Client() as client:
                assert make_cancellable(client)
                with client.stream("GET", f"http://127.0.0.1:{server.server_address[1]}/") as response:
                    pieces = list(response.iter_raw())
        finally:
            server.shutdown()
    assert b"".join(pieces) == body
    assert max(map(len, pieces)) > 64 * 1024
