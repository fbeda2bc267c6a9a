"""The httpx/httpcore cancellation patch (cancellable.py): it reaches the pools it must, and says when it cannot;
its connections read up to READ_SIZE bytes at a time.

Prompt cancellation itself (a blocked read ends when the scope is cancelled) is tested end to
end in tests/pipeline/test_cancel.py.
"""

from __future__ import annotations

import http.server
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import httpcore
import httpx
import pytest

from converter.registry.cancellable import READ_SIZE, _CancellableBackend, _CancellableStream, make_cancellable
from tests.support.registry import _self_signed_loopback_cert


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


def _serve(body: bytes, tls: tuple[Path, Path] | None) -> http.server.ThreadingHTTPServer:
    """A loopback HTTP(S) server answering every GET with ``body``, written at once."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_body_arrives_in_pieces_bigger_than_httpcores_reads(scheme: str, tmp_path: Path) -> None:
    """Over a real loopback socket, a 16 MiB answer reaches httpx in pieces of more than the
    64 KiB httpcore asks for (the server writes it at once), also over TLS, where one ``recv``
    returns a 16 KiB record at most; every byte arrives."""
    body = os.urandom(1 << 20) * 16
    tls = _self_signed_loopback_cert(tmp_path) if scheme == "https" else None
    server = _serve(body, tls)
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(tls[0])) if tls else False) as client:
            assert make_cancellable(client)
            with client.stream("GET", f"{scheme}://127.0.0.1:{server.server_address[1]}/") as response:
                pieces = list(response.iter_raw())
    finally:
        server.shutdown()
        server.server_close()
    assert b"".join(pieces) == body
    assert max(map(len, pieces)) > 64 * 1024


def test_a_tls_read_takes_the_records_at_hand_and_waits_for_no_more(tmp_path: Path) -> None:
    """Only what is there: a server that sends 100 KiB and then nothing (keeping the connection
    open) gets all of it in one read, and the read returns instead of waiting for more."""
    cert, key = _self_signed_loopback_cert(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    sent = threading.Event()
    release = threading.Event()

    def serve() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"y" * (100 << 10))
            sent.set()
            release.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        backend = _CancellableBackend(httpcore.SyncBackend())
        stream = backend.connect_tcp("127.0.0.1", listener.getsockname()[1], timeout=5)
        stream = stream.start_tls(ssl.create_default_context(cafile=str(cert)), server_hostname="127.0.0.1",
                                  timeout=5)
        assert sent.wait(5)
        time.sleep(0.2)  # every record is in the socket's buffer
        started = time.monotonic()
        data = stream.read(64 * 1024, timeout=5)
        assert time.monotonic() - started < 2
        assert data == b"y" * (100 << 10)
        stream.close()
    finally:
        release.set()
        thread.join(5)
        listener.close()
