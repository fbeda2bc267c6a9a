"""Cancelling a ``CancelScope`` ends the registry I/O of the threads in it at once.

The layer graph runs every worker task in a scope and cancels it on Ctrl-C and on the first
failure, so a worker blocked on a stalled registry must return at once, not after the read
timeout (60 s by default). ``StallServer`` is a loopback HTTP server that stalls in one place:
before the response headers, in the middle of a blob's body, while it should be reading an
upload, or by asking for a long Retry-After wait. Each case runs a real ``RegistryClient``
(default timeouts: only cancellation can end the wait in time) and times the cancel.
"""

from __future__ import annotations

import _thread
import http.server
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from converter.cancel import CancelScope
from converter.erofs.target import TargetFormat
from converter.errors import Cancelled, NotFound
from converter.oci.mediatypes import MediaType
from converter.oci.model import Descriptor
from converter.pipeline.graph import GraphSettings, LayerFailed, LayerGraph
from converter.reference import Digest, parse_reference
from converter.registry.client import RegistryClient
from converter.registry.retry import RetryPolicy, interruptible_sleep
from converter.transports import RegistrySource

from .fakes import FakeEngine, MemorySink
from .test_graph import workers_alive

#: How long a cancelled operation may take to return (the stalls last STALL seconds).
PROMPT = 1.0
STALL = 30.0
BLOB = b"x" * 100_000
DIGEST = Digest.from_bytes(BLOB)
MISSING = Digest.from_bytes(b"missing")


class StallServer:
    """A loopback registry that stalls blob requests as ``mode`` says; ``stalled`` is set when it does.

    ``headers``: a GET gets no answer; ``body``: a GET gets the headers and half of ``BLOB``;
    ``upload``: HEAD says 404, POST opens a session, and the PUT's body is never read;
    ``retry-after``: every GET is answered 503 with ``Retry-After: 10``. A GET of ``MISSING``
    is always answered 404 at once.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stalled = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                """Silent."""

            def do_GET(self) -> None:
                if self.path.endswith(str(MISSING)):
                    self._answer(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}')
                elif server.mode == "retry-after":
                    server.stalled.set()
                    self._answer(503, b"{}", ("Retry-After", "10"))
                elif server.mode == "body":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BLOB)))
                    self.end_headers()
                    self.wfile.write(BLOB[: len(BLOB) // 2])
                    self.wfile.flush()
                    server.stall()
                else:
                    server.stall()

            def do_HEAD(self) -> None:
                self._answer(404, b"")

            def do_POST(self) -> None:
                self._answer(202, b"", ("Location", "/v2/r/blobs/uploads/1"))

            def do_PUT(self) -> None:
                server.stall()  # never reads the body: the client's send blocks once buffers fill

            def _answer(self, status: int, body: bytes, *headers: tuple[str, str]) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def stall(self) -> None:
        self.stalled.set()
        self.release.wait(STALL)

    def __enter__(self) -> StallServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()



def cancel_while_stalled(server: StallServer, work: Callable[[], object]) -> tuple[float, BaseException | None]:
    """Run ``work`` in a thread inside a scope, cancel it once the server stalls; (seconds, error)."""
    scope = CancelScope()
    errors: list[BaseException] = []

    def worker() -> None:
        with scope.entered():
            try:
                work()
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=worker, name="cancel-test")
    thread.start()
    assert server.stalled.wait(10), "the server never stalled"
    time.sleep(0.2)  # let the client settle into its blocking read or write
    started = time.monotonic()
    scope.cancel()
    thread.join(STALL)
    elapsed = time.monotonic() - started
    assert not thread.is_alive()
    return elapsed, errors[0] if errors else None


def test_cancel_ends_a_wait_for_response_headers(client: RegistryClient) -> None:
    with StallServer("headers") as server:
        elapsed, error = cancel_while_stalled(server, lambda: client.open_blob(server.host, "r", DIGEST))
    assert elapsed < PROMPT
    assert isinstance(error, Cancelled), error


def test_cancel_ends_a_stalled_blob_body(client: RegistryClient) -> None:
    with StallServer("body") as server:
        def read() -> None:
            with client.open_blob(server.host, "r", DIGEST, size=len(BLOB)) as reader:
                reader.read()

        elapsed, error = cancel_while_stalled(server, read)
    assert elapsed < PROMPT
    assert isinstance(error, Cancelled), error


def test_cancel_ends_a_stalled_upload(client: RegistryClient, tmp_path: Path) -> None:
    data = b"u" * (64 << 20)  # far more than loopback socket buffers hold
    path = tmp_path / "blob"
    path.write_bytes(data)
    with StallServer("upload") as server:
        elapsed, error = cancel_while_stalled(
            server, lambda: client.push_blob(server.host, "r", Digest.from_bytes(data), len(data), path))
    assert elapsed < PROMPT
    assert isinstance(error, Cancelled), error


def test_cancel_cuts_a_retry_after_wait_short(client: RegistryClient) -> None:
    with StallServer("retry-after") as server:
        elapsed, error = cancel_while_stalled(server, lambda: client.open_blob(server.host, "r", DIGEST))
    assert elapsed < PROMPT
    assert isinstance(error, Cancelled), error


def test_no_scope_and_uncancelled_scope_change_nothing() -> None:
    started = time.monotonic()
    interruptible_sleep(0.05)
    with CancelScope().entered():
        interruptible_sleep(0.05)
    assert time.monotonic() - started >= 0.1
    assert RetryPolicy().sleep is interruptible_sleep


def test_a_cancelled_scope_refuses_new_requests(client: RegistryClient) -> None:
    scope = CancelScope()
    scope.cancel()
    with StallServer("headers") as server, scope.entered(), pytest.raises(Cancelled):
        client.open_blob(server.host, "r", DIGEST)
    assert not server.stalled.is_set()  # nothing was sent


# --- the graph ------------------------------------------------------------------------------


def graph_over(server: StallServer, client: RegistryClient, layers: list[Descriptor], tmp_path: Path) -> LayerGraph:
    engine = FakeEngine()
    source = RegistrySource(client, parse_reference(f"{server.host}/r:1"))
    settings = GraphSettings(source=source, sink=MemorySink(), image="example.com/app:1", platform="linux/amd64",
                             fmt=TargetFormat(), builder="python", build_time=0, jobs=2, run_ahead=0, prepass=False,
                             convert=engine.convert, normalise=engine.normalise, progress=None,
                             log=structlog.get_logger())
    return LayerGraph(settings, layers, workdir=tmp_path / "g")


def test_a_failing_layer_stops_a_stalled_download_at_once(client: RegistryClient, tmp_path: Path) -> None:
    """Layer 2 is missing while layer 1's download stalls: the failure is reported at once."""
    layers = [Descriptor(MediaType.OCI_LAYER, DIGEST, len(BLOB)), Descriptor(MediaType.OCI_LAYER, MISSING, 7)]
    with StallServer("body") as server:
        graph = graph_over(server, client, layers, tmp_path)
        started = time.monotonic()
        with pytest.raises(LayerFailed, match=r"layer 2/2 .*: pull: .*404") as info:
            graph.run()
        elapsed = time.monotonic() - started
    assert isinstance(info.value.__cause__, NotFound)
    assert elapsed < 5, elapsed  # not the 60 s read timeout of layer 1's stalled body
    assert not (tmp_path / "g").exists()
    assert workers_alive() == []


@pytest.mark.usefixtures("python_sigint")
def test_ctrl_c_stops_a_stalled_download_at_once(client: RegistryClient, tmp_path: Path) -> None:
    layers = [Descriptor(MediaType.OCI_LAYER, DIGEST, len(BLOB))]
    with StallServer("body") as server:
        graph = graph_over(server, client, layers, tmp_path)

        def interrupt() -> None:
            if server.stalled.wait(10):
                time.sleep(0.2)
                _thread.interrupt_main()

        threading.Thread(target=interrupt, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            graph.run()
        elapsed = time.monotonic() - started
    assert server.stalled.is_set()
    assert elapsed < 0.2 + PROMPT + 1, elapsed
    assert not (tmp_path / "g").exists()
    assert workers_alive() == []
