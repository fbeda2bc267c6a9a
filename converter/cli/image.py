"""`convert SOURCE ...`: turns parsed flags into a conversion and renders its progress.

Kept apart from ``cli.py`` so the argument parser stays import-light (``convert layer`` need
not load httpx), and so mirror jobs can reuse ``make_client``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx
import structlog

from converter import log as logsetup
from converter.blob.encoding import make_encoding
from converter.convert.layer import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_EXPANDED, default_build_time
from converter.erofs.target import parse_format
from converter.errors import UsageError
from converter.oci.mediatypes import parse_profile
from converter.oci.model import Platform
from converter.pipeline import ConvertOptions, convert_image
from converter.pipeline.options import default_destination, resolve_encoding
from converter.pipeline.progress import ProgressCallback, ProgressEvent, Stage
from converter.reference import OciLayoutRef, Reference, parse_location
from converter.registry.client import DEFAULT_RETRY, DEFAULT_TIMEOUT, RegistryClient
from converter.registry.credentials import DockerConfigCredentials
from converter.registry.retry import RetryPolicy
from converter.transports import open_sink, open_source

PLAIN_HTTP_ENV = "CONVERT_PLAIN_HTTP"  # comma- or space-separated hosts, as docker/compose.yaml sets it


def plain_http_hosts(flags: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """Hosts from ``--plain-http`` (each may list several, comma- or space-separated) and
    ``$CONVERT_PLAIN_HTTP`` of ``env`` (default: the process environment)."""
    hosts: list[str] = []
    for text in (*flags, (os.environ if env is None else env).get(PLAIN_HTTP_ENV, "")):
        hosts.extend(h for h in re.split(r"[\s,]+", text) if h)
    return hosts


def client_timeout(seconds: float | None) -> httpx.Timeout:
    """The client's timeouts for ``--timeout SECONDS`` (None: the defaults).

    ``SECONDS`` is how long a transfer may stall, reading or writing. Connecting and waiting
    for a pooled connection keep their short defaults: a registry that does not accept a
    connection within 10 s is down, and waiting longer only delays the retry.
    """
    if seconds is None:
        return DEFAULT_TIMEOUT
    return httpx.Timeout(connect=DEFAULT_TIMEOUT.connect, read=seconds, write=seconds, pool=DEFAULT_TIMEOUT.pool)


def make_client(*, plain_http: Sequence[str] = (), ca_bundle: str | None = None, retry: RetryPolicy | None = None,
                timeout: float | httpx.Timeout | None = None) -> RegistryClient:
    """One registry client for the whole process (tokens are cached per scope inside it).

    ``retry`` is the policy for every request (default: 4 attempts with backoff); ``timeout``
    either seconds for ``client_timeout`` or complete httpx timeouts.
    """
    timeouts = timeout if isinstance(timeout, httpx.Timeout) else client_timeout(timeout)
    return RegistryClient(credentials=DockerConfigCredentials(), plain_http=plain_http_hosts(plain_http),
                          ca_bundle=ca_bundle, retry=retry if retry is not None else DEFAULT_RETRY,
                          timeout=timeouts)


def layer_limit(value: int | None, default: int) -> int | None:
    """A ``--max-expanded``/``--max-entries`` value as a limit: absent (None) is the default, 0 is
    None (no limit); the same rule as ``convert layer``'s flags."""
    if value is None:
        return default
    return value or None


def parse_platforms(values: Sequence[str]) -> tuple[Platform, ...]:
    out = []
    for v in values:
        try:
            out.append(Platform.parse(v))
        except Exception as exc:  # the model raises its own error type; make it a usage error
            raise UsageError(f"--platform {v!r}: expected OS/ARCH[/VARIANT]") from exc
    return tuple(out)


def _display(loc: Reference | OciLayoutRef) -> str:
    return f"oci:{loc.path}" + (f":{loc.tag}" if loc.tag else "") if isinstance(loc, OciLayoutRef) else str(loc)


class _Bars:
    """rich progress bars: one row per layer and stage (pull, convert, push)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), console=Console(stderr=True), transient=False)
        self._tasks: dict[tuple[str, int, Stage], Any] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> _Bars:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def __call__(self, ev: ProgressEvent) -> None:
        key = (ev.platform, ev.index, ev.stage)
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                label = f"{ev.platform} layer {ev.index} {ev.layer.hex[:12]} {ev.stage.value:<7}"
                task = self._progress.add_task(label, total=ev.total)
                self._tasks[key] = task
            completed = ev.total if ev.done and ev.total else ev.completed
            self._progress.update(task, completed=completed, total=ev.total)
            if ev.note:
                self._progress.update(task, description=f"{self._progress.tasks[task].description} ({ev.note})")


@contextmanager
def _progress(enabled: bool) -> Iterator[ProgressCallback | None]:
    if not enabled:
        yield None
        return
    with _Bars() as bars:
        yield bars


def run_image_conversion(args: argparse.Namespace) -> int:
    """Convert one image per the parsed flags; prints ``REF@sha256:…`` on success."""
    verbosity = -1 if args.quiet else (1 if args.verbose else 0)
    logsetup.configure(fmt=args.log_format or "auto", verbosity=verbosity)
    fmt = parse_format(args.to)
    profile = parse_profile(args.media_type_profile)
    encoding = resolve_encoding(make_encoding(args.blob_compression, chunk_size=args.chunk_size,
                                              verity=args.verity), profile)
    src = parse_location(args.source)
    dest = parse_location(args.dest) if args.dest else default_destination(src, fmt, encoding)
    if args.jobs < 0:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    options = ConvertOptions(
        fmt=fmt,
        profile=profile,
        encoding=encoding,
        platforms=parse_platforms(args.platform),
        merge_index=args.merge_index,
        jobs=args.jobs,
        builder=args.builder,
        workdir=Path(args.workdir) if args.workdir else None,
        build_time=default_build_time(),
        max_expanded=layer_limit(args.max_expanded, DEFAULT_MAX_EXPANDED),
        max_entries=layer_limit(args.max_entries, DEFAULT_MAX_ENTRIES),
    )
    needs_client = isinstance(src, Reference) or isinstance(dest, Reference)
    retry = RetryPolicy(attempts=args.retries) if args.retries is not None else None
    client = (make_client(plain_http=args.plain_http, ca_bundle=args.ca_bundle, retry=retry, timeout=args.timeout)
              if needs_client else None)
    with client if client is not None else nullcontext():
        source = open_source(src, client=client)
        sink = open_sink(dest, client=client)
        show_bars = sys.stderr.isatty() and not args.quiet and (args.log_format in (None, "console"))
        with _progress(show_bars) as progress:
            result = convert_image(source, src, sink, dest, options=options, progress=progress,
                                   log=structlog.get_logger())
    print(f"{_display(dest)}@{result.digest}")
    return 0
