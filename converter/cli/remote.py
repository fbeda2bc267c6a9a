"""`convert ls REF [PATH]` / `convert cat REF PATH` on image references: the merged view of an EROFS image.

Fetches only what is read: HTTP ranges of raw blobs, verified chunk frames of chunk-indexed
``+zstd`` blobs (see ``converter.imageview``). ``-v`` reports the blob bytes fetched.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext

from converter.erofs.reader import ErofsImage, Stat
from converter.errors import ConverterError, ErofsFormatError, UsageError
from converter.imageview.layers import Fetched, open_layers, pick_manifest
from converter.imageview.merged import MergedView
from converter.oci.model import Platform
from converter.reference import Location, OciLayoutRef, Reference, parse_location

LsLine = Callable[[bytes, Stat, ErofsImage], str]
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@contextmanager
def open_local(path: str) -> Iterator[ErofsImage]:
    """An EROFS image file, or a ``+zstd`` layer blob (``convert layer --blob-compression zstd``):
    that one is decompressed into an unnamed temporary file first (a local file carries no
    chunk-index annotation to seek with); a dm-verity tree after the image is ignored."""
    from converter.blob.reader import spool_zstd
    from converter.imageview.layers import MAX_SPOOL

    with open(path, "rb") as f, ExitStack() as stack:
        head = f.read(512)
        f.seek(0)
        try:
            if not head.startswith(ZSTD_MAGIC):
                image = ErofsImage(f)
            else:
                data = stack.enter_context(spool_zstd(f, digest=None, where=f"reading {path}", limit=MAX_SPOOL))
                image = ErofsImage(data)  # type: ignore[arg-type]
        except ErofsFormatError as exc:
            raise not_erofs(path, head, exc) from exc
        with image as img:
            yield img


_LOOKS_LIKE = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bzip2"),
               (b"\xfd7zXZ\x00", "xz"))


def not_erofs(path: str, head: bytes, exc: ErofsFormatError) -> ErofsFormatError:
    """The error for a file that is not an EROFS image: it names the file and, for a layer given
    by mistake, what the file looks like."""
    kind = next((name for magic, name in _LOOKS_LIKE if head.startswith(magic)), None)
    if kind is None and len(head) == 512 and head[257:262] == b"ustar":
        kind = "tar"
    if kind is None:
        return ErofsFormatError(f"reading {path}: {exc}")
    return ErofsFormatError(f"reading {path}: not an EROFS image, it looks like a {kind} file (a layer? "
                            f"`convert layer {path} -o OUT.erofs` converts one)")


def is_image_reference(text: str) -> bool:
    """Whether ``text`` (not an existing file) names an image: ``oci:DIR[:TAG]`` or a reference
    with an explicit registry (``ghcr.io/x:1``, ``localhost:5000/x:1``): a bare ``name:tag``
    is taken as a file name, so a typo never turns into a Docker Hub request."""
    if os.path.exists(text):
        return False
    if text.startswith("oci:"):
        return True
    first, slash, _ = text.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


@contextmanager
def _view(args: argparse.Namespace, fetched: Fetched) -> Iterator[MergedView]:
    from converter.cli.image import make_client
    from converter.transports import open_source

    location = parse_location(args.image)
    platform = None
    if args.platform:
        try:
            platform = Platform.parse(args.platform)
        except ConverterError as exc:
            raise UsageError(f"--platform {args.platform!r}: expected OS/ARCH[/VARIANT]") from exc
    client = make_client(plain_http=args.plain_http, ca_bundle=args.ca_bundle) \
        if isinstance(location, Reference) else None
    with client if client is not None else nullcontext():
        source = open_source(location, client=client)
        image = _display(location)
        manifest = pick_manifest(source, image=image, platform=platform)
        with open_layers(source, manifest, image=image, fetched=fetched) as layers:
            yield MergedView(layers)


def _display(loc: Location) -> str:
    return f"oci:{loc.path}" + (f":{loc.tag}" if loc.tag else "") if isinstance(loc, OciLayoutRef) else str(loc)


def _report(args: argparse.Namespace, fetched: Fetched) -> None:
    if args.verbose:
        print(f"fetched {fetched.total} blob bytes in {fetched.requests} requests", file=sys.stderr)


def remote_ls(args: argparse.Namespace, line: LsLine) -> int:
    fetched = Fetched()
    with _view(args, fetched) as view:
        out = sys.stdout
        for path, img, st in view.walk(os.fsencode(args.path)):
            out.write(line(path, st, img) + "\n")
        out.flush()
    _report(args, fetched)
    return 0


def remote_cat(args: argparse.Namespace) -> int:
    fetched = Fetched()
    with _view(args, fetched) as view:
        img, path, st = view.resolve(os.fsencode(args.path))
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "is a directory", args.path)
        out = sys.stdout.buffer
        for chunk in img.read_file(path):
            out.write(chunk)
        out.flush()
    _report(args, fetched)
    return 0
