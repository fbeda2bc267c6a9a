"""Building a layer in a process of its own, so that several layers use several cores.

Tar parsing, normalising and laying out EROFS metadata are Python code: in one process they
share the GIL, so building two layers in two threads is no faster than one after the other
(docs/architecture.md §3.2). ``ProcessConvert`` is a ``ConvertLayerFn`` that runs
``convert_layer`` in a child process and looks, to its caller, exactly like the function: the
same arguments, the same ``LayerResult``, the same output file and bytes.

What crosses between the processes (``multiprocessing`` connections, child started by a fork
server, not a fork of the threaded caller):

* the source stream, fed by a thread of the caller in 1 MiB messages (so any stream works,
  and the caller's cancellable reader still decides when reading stops);
* the lower view, as calls: the child asks ``dir_meta(path)`` and ``open_file(path)`` and the
  caller answers them from its own ``LowerView`` (a lower file's bytes are handed over in a
  private file in ``workdir``). A layer with no implicit directories and no cross-layer hard
  link never asks, so it never waits for the layers below;
* ``progress`` (at most ten times a second) and ``on_tree`` (the tree, ``layers/treecodec.py``:
  metadata without the child's data references);
* not ``on_data_final``: the child never calls it (a streamed upload would have to wait for
  the child's file anyway; the caller then uploads the finished image the usual way);
* the result, or the error: a ``ConverterError`` or ``OSError`` is re-raised in the caller as
  itself; anything else is a bug in the child and is raised as ``BuildProcessError`` with the
  child's traceback as a note.

The child ignores SIGINT (Ctrl-C reaches the whole process group; the caller decides) and
leads a process group of its own, so that cancelling kills it together with any mkfs.erofs it
runs. If the child dies without an answer (killed, out of memory), the call fails with a
``ConverterError`` that says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, BinaryIO

from converter.cancel import current_scope
from converter.convert.layer import LayerOptions, LayerResult, convert_layer
from converter.convert.tuning import limit_malloc_arenas, one_layer_at_a_time, raise_gc_threshold
from converter.errors import Cancelled, ConverterError
from converter.layers.filedata import FileData
from converter.layers.model import DirMeta, Inode, LowerView
from converter.layers.treecodec import decode_tree, encode_tree

_CHUNK = 1 << 20
_POLL = 0.25  # seconds between checks for cancellation while waiting on the child
_PROGRESS_EVERY = 0.1  # seconds
_EXIT_WAIT = 5.0  # seconds a build process that has answered gets to exit before it is killed

_context_lock = threading.Lock()
_context: ForkServerContext | None = None


class BuildProcessError(Exception):
    """A build process raised something other than a ``ConverterError``/``OSError``: a bug,
    reported as one (not as a user error), with the child's traceback as a note."""


def _fork_server() -> ForkServerContext:
    """The fork-server context, with this module (and so the whole layer engine) preloaded:
    a build process starts as a fork of an idle server that has imported everything once."""
    global _context
    with _context_lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            _context = ctx
        return _context


def builds_apart(convert: object) -> bool:
    """Whether a ``ConvertLayerFn`` builds in processes of its own (``ProcessConvert``, or a
    wrapper around one that says so), so that the graph may overlap its builds."""
    return bool(getattr(convert, "separate_process", False))


def _start_fork_server() -> None:
    with contextlib.suppress(Exception):  # a failure shows again, with its cause, at the first build
        _fork_server()
        multiprocessing.forkserver.ensure_running()


@dataclasses.dataclass(frozen=True, slots=True)
class _Request:
    out_path: Path
    options: LayerOptions
    has_lower: bool
    media_type: str | None
    layer: str
    workdir: Path | None
    progress: bool
    on_tree: bool
    source_digest: str | None = None


class ProcessConvert:
    """``convert_layer`` in a child process (see the module docstring)."""

    #: The engine overlaps the builds of layers run this way (``GraphSettings.overlap_builds``).
    separate_process = True

    def __init__(self) -> None:
        # The fork server imports the layer engine once (~0.3 s of CPU); start it now, in the
        # background, so that it is ready when the first layer has been pulled.
        threading.Thread(target=_start_fork_server, name="fork-server", daemon=True).start()

    def __call__(self, src: BinaryIO, out_path: Path, *, options: LayerOptions, lower: LowerView | None = None,
                 media_type: str | None = None, layer: str = "", workdir: Path | None = None,
                 progress: Callable[[int], None] | None = None,
                 on_tree: Callable[[Inode], None] | None = None, source_digest: str | None = None,
                 on_data_final: Callable[[Path, bytes, int], object] | None = None) -> LayerResult:
        request = _Request(out_path=out_path, options=options, has_lower=lower is not None, media_type=media_type,
                           layer=layer, workdir=workdir, progress=progress is not None, on_tree=on_tree is not None,
                           source_digest=source_digest)
        ctx = _fork_server()
        ctl, ctl_child = ctx.Pipe()
        data_recv, data_send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child_main, args=(ctl_child, data_recv, request), daemon=True,
                           name=f"build {layer or out_path.name}")
        try:
            proc.start()
        except BaseException:
            for conn in (ctl, ctl_child, data_recv, data_send):
                conn.close()
            raise
        ctl_child.close()
        data_recv.close()
        feeder = _Feeder(src, data_send)
        try:
            result = _serve(proc, ctl, feeder, lower=lower, workdir=workdir, progress=progress, on_tree=on_tree)
            proc.join(_EXIT_WAIT)  # it has answered and is exiting
            return result
        finally:
            if proc.is_alive():
                _kill_group(proc.pid)
            proc.join()
            feeder.stop()
            ctl.close()


def _kill_group(pid: int | None) -> None:
    """Kill a build process and whatever it started (it leads its own process group)."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # in case it died before it could make its group


class _Feeder:
    """Copies the source stream to the child in a thread; remembers how reading it failed."""

    def __init__(self, src: BinaryIO, conn: Connection) -> None:
        self.error: BaseException | None = None
        self._src = src
        self._conn = conn
        self._thread = threading.Thread(target=self._run, name="build-feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while chunk := self._src.read(_CHUNK):
                self._conn.send_bytes(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child is gone; the caller learns why from the control connection
        except BaseException as exc:  # handed to the serving thread, which raises it
            self.error = exc
        finally:
            self._conn.close()

    def stop(self) -> None:
        self._conn.close()  # a send blocked on a dead child's full pipe fails at once
        self._thread.join()


def _serve(proc: BaseProcess, ctl: Connection, feeder: _Feeder, *, lower: LowerView | None, workdir: Path | None,
           progress: Callable[[int], None] | None, on_tree: Callable[[Inode], None] | None) -> LayerResult:
    """Answer the child until it sends its result; raise what it or the feeder raised."""
    scope = current_scope()
    while True:
        if scope is not None and scope.cancelled:
            raise Cancelled("building a layer: cancelled")
        if isinstance(feeder.error, Cancelled):
            raise feeder.error
        if not ctl.poll(_POLL):
            continue
        try:
            kind, payload = ctl.recv()
        except (EOFError, ConnectionResetError):
            raise _died(proc, feeder) from None
        if kind == "progress":
            if progress is not None:
                progress(payload)
        elif kind == "tree":
            if on_tree is not None:
                on_tree(decode_tree(payload))
        elif kind in ("dir_meta", "open_file"):
            assert lower is not None
            answer = lower.dir_meta(payload) if kind == "dir_meta" else _hand_over(lower.open_file(payload), workdir)
            try:
                ctl.send(answer)
            except (BrokenPipeError, ConnectionResetError):
                raise _died(proc, feeder) from None
        elif kind == "result":
            return payload  # type: ignore[no-any-return]
        elif kind == "error":
            if feeder.error is not None:  # the child only saw the stream end early
                raise feeder.error
            raise pickle.loads(payload)
        elif kind == "bug":
            error = BuildProcessError(f"the build process failed: {payload[0]}")
            error.add_note(f"in the build process:\n{payload[1]}")
            raise error
        else:
            raise AssertionError(f"unknown message from the build process: {kind!r}")


def _died(proc: BaseProcess, feeder: _Feeder) -> BaseException:
    """The error for a build process that went away without an answer: not the input's fault
    and not a bug of ours, but the machine's (most often the kernel's out-of-memory killer)."""
    proc.join()
    if feeder.error is not None:
        return feeder.error
    return ConverterError(f"the build process exited without an answer ({_exit_text(proc.exitcode)}; "
                          "out of memory? fewer --layer-jobs or --no-build-processes use less)")


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


def _hand_over(found: tuple[Inode, FileData] | None, workdir: Path | None) -> tuple[bytes, str] | None:
    """A lower file for the child: its node (encoded) and a private file with its bytes."""
    if found is None:
        return None
    node, data = found
    fd, name = tempfile.mkstemp(prefix="lower-", dir=workdir)
    try:
        with open(fd, "wb") as out:
            for chunk in data.chunks():
                out.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return encode_tree(node), name


# -- the child ---------------------------------------------------------------------------------


class _ConnReader(io.RawIOBase):
    """The source stream as the feeder sends it (EOF when it closes its end)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._buf:
            try:
                self._buf = memoryview(self._conn.recv_bytes())
            except EOFError:
                return 0
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _Channel:
    """The child's end of the control connection: sends from any thread, calls from one."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, kind: str, payload: Any) -> None:
        with self._lock:
            self._conn.send((kind, payload))

    def call(self, kind: str, payload: Any) -> Any:
        with self._lock:
            self._conn.send((kind, payload))
            return self._conn.recv()


class _FileBytes:
    """``FileData`` over a private file the caller wrote; the file is removed once opened."""

    def __init__(self, name: str) -> None:
        self._f = open(name, "rb")  # noqa: SIM115 - read by the sink, closed at EOF
        os.unlink(name)

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if not data or n < 0:
            self._f.close()
        return data

    def chunks(self, size: int = _CHUNK) -> Iterator[bytes]:
        with self._f:
            while chunk := self._f.read(size):
                yield chunk


class _RemoteLower:
    """The caller's ``LowerView``, asked over the control connection."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def dir_meta(self, path: bytes) -> DirMeta | None:
        got: DirMeta | None = self._channel.call("dir_meta", path)
        return got

    def open_file(self, path: bytes) -> tuple[Inode, FileData] | None:
        got = self._channel.call("open_file", path)
        if got is None:
            return None
        node_bytes, name = got
        return decode_tree(node_bytes), _FileBytes(name)


class _Progress:
    def __init__(self, channel: _Channel) -> None:
        self._channel = channel
        self._last = 0.0

    def __call__(self, n: int) -> None:
        now = time.monotonic()
        if now - self._last >= _PROGRESS_EVERY:
            self._last = now
            self._channel.send("progress", n)


def _child_main(ctl: Connection, data: Connection, request: _Request) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setpgid(0, 0)
    raise_gc_threshold()
    limit_malloc_arenas()
    channel = _Channel(ctl)
    try:
        with one_layer_at_a_time():
            result = convert_layer(
                io.BufferedReader(_ConnReader(data), _CHUNK), request.out_path, options=request.options,
                lower=_RemoteLower(channel) if request.has_lower else None, media_type=request.media_type,
                layer=request.layer, workdir=request.workdir,
                progress=_Progress(channel) if request.progress else None,
                on_tree=(lambda root: channel.send("tree", encode_tree(root))) if request.on_tree else None,
                source_digest=request.source_digest,
            )
        channel.send("result", dataclasses.replace(result, root=None, annotations=dict(result.annotations)))
    except (ConverterError, OSError) as exc:
        channel.send("error", _picklable(exc))
    except BaseException as exc:  # a bug: reported with its traceback, not as a user error
        channel.send("bug", (f"{type(exc).__name__}: {exc}", traceback.format_exc()))


def _picklable(exc: ConverterError | OSError) -> bytes:
    """``exc`` pickled, or (if it does not survive the round trip) a ``ConverterError`` with its
    message: the caller prints the message either way."""
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
        return blob
    except Exception:  # any pickling failure: fall back to the message
        return pickle.dumps(ConverterError(str(exc)))
