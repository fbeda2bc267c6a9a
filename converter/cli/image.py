"""`convert SOURCE ...`: turns parsed flags into a conversion and renders its progress.

Kept apart from ``cli.py`` so the argument parser stays import-light (``convert layer`` need
not load httpx), and so mirror jobs can reuse ``make_client``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import structlog

from converter import log as logsetup
from converter.blob.encoding import make_encoding
from converter.cli.args import limit, verbosity
from converter.cli.progress import LayerBars, summary_line
from converter.convert.layer import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_EXPANDED, default_build_time
from converter.convert.tuning import collector_paused
from converter.erofs.target import parse_format
from converter.errors import ImageError, NotFound, UsageError
from converter.mirror.plan import Recipe, existing_conversion, selected_manifests
from converter.oci.mediatypes import parse_profile
from converter.oci.model import Index, Platform, parse_manifest
from converter.pipeline import ConvertOptions, convert_image
from converter.pipeline.options import default_destination, resolve_encoding
from converter.pipeline.progress import ProgressCallback
from converter.reference import Digest, Location, OciLayoutRef, Reference, parse_location
from converter.registry.client import DEFAULT_RETRY, RegistryClient, Timeouts
from converter.registry.credentials import DockerConfigCredentials
from converter.registry.retry import RetryPolicy
from converter.transports import open_sink, open_source
from converter.transports.base import ImageSource
from converter.transports.registry import check_push_access

PLAIN_HTTP_ENV = "CONVERT_PLAIN_HTTP"  # comma- or space-separated hosts, as docker/compose.yaml sets it


def plain_http_hosts(flags: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """Hosts from ``--plain-http`` (each may list several, comma- or space-separated) and
    ``$CONVERT_PLAIN_HTTP`` of ``env`` (default: the process environment)."""
    hosts: list[str] = []
    for text in (*flags, (os.environ if env is None else env).get(PLAIN_HTTP_ENV, "")):
        hosts.extend(h for h in re.split(r"[\s,]+", text) if h)
    return hosts


def client_timeout(seconds: float | None, deadline: float | None = None) -> Timeouts:
    """The client's timeouts for ``--timeout SECONDS`` and ``--deadline SECONDS`` (None: the defaults).

    ``--timeout`` is how long a transfer may stall, reading or writing; ``--deadline`` how long
    one answer read into memory (manifest, tag page, token) may take in all. Connecting and
    waiting for a pooled connection keep their short defaults: a registry that does not accept
    a connection within 10 s is down, and waiting longer only delays the retry.
    """
    return Timeouts.from_seconds(seconds, deadline)


def make_client(*, plain_http: Sequence[str] = (), ca_bundle: str | None = None, retry: RetryPolicy | None = None,
                timeout: float | Timeouts | None = None, deadline: float | None = None) -> RegistryClient:
    """One registry client for the whole process (tokens are cached per scope inside it).

    ``retry`` is the policy for every request (default: 4 attempts with backoff); ``timeout``
    either seconds for ``client_timeout`` (with ``deadline``) or complete timeouts.
    """
    timeouts = timeout if isinstance(timeout, Timeouts) else client_timeout(timeout, deadline)
    return RegistryClient(credentials=DockerConfigCredentials(), plain_http=plain_http_hosts(plain_http),
                          ca_bundle=ca_bundle, retry=retry if retry is not None else DEFAULT_RETRY,
                          timeout=timeouts)


class LocationOpener:
    """Opens image locations given as text (``REF``, ``oci:DIR[:TAG]``, archives), making one
    registry client the first time a registry is named; ``close`` closes it."""

    def __init__(self, *, plain_http: Sequence[str] = (), ca_bundle: str | None = None) -> None:
        self._plain_http = plain_http
        self._ca_bundle = ca_bundle
        self._client: RegistryClient | None = None

    def __call__(self, text: str) -> tuple[ImageSource, Location]:
        loc = parse_location(text)
        if isinstance(loc, Reference) and self._client is None:
            self._client = make_client(plain_http=self._plain_http, ca_bundle=self._ca_bundle)
        return open_source(loc, client=self._client), loc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def parse_platforms(values: Sequence[str]) -> tuple[Platform, ...]:
    out = []
    for v in values:
        try:
            out.append(Platform.parse(v))
        except UsageError as exc:
            raise UsageError(f"--platform {v!r}: expected OS/ARCH[/VARIANT]") from exc
    return tuple(out)


def _close_later(stack: ExitStack, transport: object) -> None:
    """Transports holding temporary files (docker-daemon:, oci-archive: sinks) have ``close``."""
    close = getattr(transport, "close", None)
    if callable(close):
        stack.callback(close)


def parse_destination(text: str) -> Location:
    """``--dest``: a registry destination needs its tag spelled out (as in mirror jobs), since
    Docker's grammar would quietly make ``REPO`` mean ``REPO:latest``; ``oci:DIR`` means tag
    ``latest`` (an OCI layout's default name)."""
    dest = parse_location(text)
    if isinstance(dest, Reference) and dest.digest is None:
        body = text.removeprefix("docker://")
        if body.rfind(":") <= body.rfind("/"):
            raise UsageError(f"--dest {text}: give a tag (--dest {text}:TAG); without --dest the result "
                             "goes to the source repository under <tag>-<format>")
    return dest


def same_image(src: Location, dest: Location) -> bool:
    """Whether writing ``dest`` would overwrite the tag ``src`` was read from."""
    if isinstance(src, Reference) and isinstance(dest, Reference):
        return src.name == dest.name and src.tag is not None and src.tag == dest.tag
    if isinstance(src, OciLayoutRef) and isinstance(dest, OciLayoutRef):
        return (src.path.resolve() == dest.path.resolve()
                and (src.tag or "latest") == (dest.tag or "latest"))
    return False


def already_converted(source: ImageSource, src: Location, dest: Location,
                      options: ConvertOptions, client: RegistryClient | None) -> Digest | None:
    """The destination's digest if it already holds this very conversion of the source (same
    source digest and provenance, the same platforms; see ``converter.mirror.plan``), else None.
    A destination that cannot be read (not there yet, no access) is simply not converted yet."""
    data, media_type, digest = source.get_manifest()
    doc = parse_manifest(data, media_type, digest=digest, what=f"manifest {_display(src)}")
    selected = selected_manifests(doc, digest, options, _display(src))
    recipe = Recipe(tool_version=options.tool_version, builder=options.builder, build_time=options.build_time)
    try:
        existing, reason = existing_conversion(open_source(dest, client=client), source_digest=digest,
                                               selected=selected, source_is_index=isinstance(doc, Index),
                                               wanted=options, recipe=recipe)
    except (NotFound, ImageError) as exc:
        existing, reason = None, str(exc)
    structlog.get_logger().debug("destination_checked", converted=existing is not None, reason=reason)
    return existing


def _display(loc: Location) -> str:
    if isinstance(loc, OciLayoutRef):
        return f"oci:{loc.path}" + (f":{loc.tag}" if loc.tag else "")
    return str(loc)


@contextmanager
def _progress(enabled: bool) -> Iterator[ProgressCallback | None]:
    if not enabled:
        yield None
        return
    with LayerBars() as bars:
        yield bars


def run_image_conversion(args: argparse.Namespace) -> int:
    """Convert one image per the parsed flags; prints ``REF@sha256:…`` on success."""
    logsetup.configure(fmt=args.log_format or "auto", verbosity=verbosity(args))
    fmt = parse_format(args.to)
    profile = parse_profile(args.media_type_profile)
    encoding = resolve_encoding(make_encoding(args.blob_compression, chunk_size=args.chunk_size,
                                              verity=args.verity), profile)
    src = parse_location(args.source)
    dest = parse_destination(args.dest) if args.dest else default_destination(src, fmt, encoding)
    if same_image(src, dest) and not args.force:
        raise UsageError(f"--dest {_display(dest)} is the source: converting would replace the source image "
                         "under its tag (give --force to do it anyway)")
    options = ConvertOptions(
        fmt=fmt,
        profile=profile,
        encoding=encoding,
        platforms=parse_platforms(args.platform),
        merge_index=args.merge_index,
        referrer=args.referrer,
        jobs=args.layer_jobs,
        processes=args.build_processes,
        builder=args.builder,
        workdir=Path(args.workdir) if args.workdir else None,
        build_time=default_build_time(),
        max_expanded=limit(args.max_expanded, DEFAULT_MAX_EXPANDED),
        max_entries=limit(args.max_entries, DEFAULT_MAX_ENTRIES),
    )
    needs_client = isinstance(src, Reference) or isinstance(dest, Reference)
    retry = RetryPolicy(attempts=args.retries) if args.retries is not None else None
    client = (make_client(plain_http=args.plain_http, ca_bundle=args.ca_bundle, retry=retry, timeout=args.timeout,
                          deadline=args.deadline)
              if needs_client else None)
    with client if client is not None else nullcontext(), ExitStack() as stack:
        source = open_source(src, client=client)
        _close_later(stack, source)
        if not args.force:
            done = already_converted(source, src, dest, options, client)
            if done is not None:
                structlog.get_logger().info("already_converted", dest=_display(dest), digest=str(done),
                                            hint="--force converts again")
                print(f"{_display(dest)}@{done}")
                return 0
        if isinstance(dest, Reference):
            assert client is not None
            check_push_access(client, dest)
        sink = open_sink(dest, client=client)
        _close_later(stack, sink)
        show_bars = sys.stderr.isatty() and not args.quiet and (args.log_format in (None, "console"))
        started = time.monotonic()
        with _progress(show_bars) as progress, collector_paused():
            result = convert_image(source, src, sink, dest, options=options, progress=progress,
                                   log=structlog.get_logger())
    summary = summary_line(result, time.monotonic() - started)
    if logsetup.resolved_format(args.log_format or "auto") == "json":
        structlog.get_logger().info("conversion_summary", summary=summary)
    elif not args.quiet:
        print(summary, file=sys.stderr)
    print(f"{_display(dest)}@{result.digest}")
    return 0
