"""Command line: flags, exit codes and error rendering. Nothing imports this module.

    convert SOURCE [--to FORMAT] [--dest DEST] ...   convert an image (registry or oci:DIR)
    convert layer IN -o OUT.erofs [--to F] ...        convert one tar layer
    convert ls IMAGE.erofs [PATH] [-x]                list an EROFS image like `tar tv`
    convert cat IMAGE.erofs PATH                      print a file of an EROFS image
    convert mirror JOB.yaml ...                       run a mirroring job

Exit status: 0 success, 1 failure, 2 usage. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from converter import __version__
from converter.cli.args import UsageParser
from converter.errors import ConverterError

SUBCOMMANDS = ("layer", "ls", "cat", "mirror")


def _layer_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="convert layer", description="Convert one tar layer (tar, tar+gzip, tar+zstd) to EROFS.")
    p.add_argument("input", help="layer file, or - for stdin")
    p.add_argument("-o", "--output", required=True, help="the EROFS image to write")
    p.add_argument("--to", default="erofs", help="erofs (raw) or erofs+ALGO[,level=N]; ALGO: "
                   "lz4, lz4hc, zstd, deflate, lzma")
    p.add_argument("--bottom", action="store_true", help="the bottom layer: keep no whiteouts/opaque markers")
    p.add_argument("--builder", choices=("python", "mkfs"), default="python",
                   help="raw images: our writer (default) or mkfs.erofs; compressed always use mkfs.erofs")
    p.add_argument("--media-type", help="the layer's media type, checked against its magic bytes")
    p.add_argument("--max-expanded", type=_size, default=None, metavar="SIZE",
                   help="refuse a layer whose tar, or whose files together, exceed SIZE bytes "
                   "(suffixes K, M, G, T; 0 = no limit; default 64G)")
    p.add_argument("--max-entries", type=_count, default=None, metavar="N",
                   help="refuse a layer with more than N tar entries (0 = no limit; default 1000000)")
    _encoding_flags(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    """A byte count like ``512``, ``64M`` or ``2G`` (binary multiples; a trailing B or iB is allowed)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, suffix = (value[:-1], value[-1]) if value[-1:] in ("K", "M", "G", "T") else (value, "")
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512, 64M, 2G)")
    return int(number) * _SIZE_SUFFIXES[suffix]


def _count(text: str) -> int:
    """A non-negative whole number."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return int(text)


def _limit(value: int | None, default: int) -> int | None:
    """A limit flag's value: the default when absent, None (unlimited) when 0."""
    if value is None:
        return default
    return value or None


def _encoding_flags(p: argparse.ArgumentParser) -> None:
    """``--blob-compression``, ``--chunk-size``, ``--verity``: how a layer's image goes on the wire."""
    p.add_argument("--blob-compression", default="none", metavar="KIND",
                   help="none (default), or zstd[,level=N] to wrap each layer blob in zstd (media type +zstd; "
                   "level 1..22, default 3)")
    p.add_argument("--chunk-size", type=_size, default=None, metavar="SIZE",
                   help="with zstd: uncompressed bytes per zstd frame, listed in a chunk index for random "
                   "access (a multiple of 4K; default 4M; 0 = one frame, no index)")
    p.add_argument("--verity", action="store_true",
                   help="append a dm-verity hash tree (sha256, 4K blocks) and annotate its root digest")


def _image_ref_flags(p: argparse.ArgumentParser) -> None:
    """Flags for reading an image reference (REG/REPO:TAG or oci:DIR:TAG) instead of a file."""
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] of an index's EROFS manifest (default: this machine's)")
    p.add_argument("--plain-http", action="append", default=[], metavar="REGISTRY")
    p.add_argument("--ca-bundle")
    p.add_argument("-v", "--verbose", action="store_true", help="report the blob bytes fetched")


def _ls_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="convert ls", description="List an EROFS image like `tar tv`; an image reference "
                    "(REGISTRY/REPO:TAG, oci:DIR:TAG) lists its layers merged as a container sees them.")
    p.add_argument("image")
    p.add_argument("path", nargs="?", default="/")
    p.add_argument("-x", "--xattrs", action="store_true", help="show extended attributes")
    _image_ref_flags(p)
    return p


def _cat_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="convert cat", description="Write a file of an EROFS image to stdout; for an image "
                    "reference, of its merged layers (symlinks followed inside the image).")
    p.add_argument("image")
    p.add_argument("path")
    _image_ref_flags(p)
    return p


def _attempts(text: str) -> int:
    """A number of tries: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a number of tries (1 or more): {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    """A positive, finite duration in seconds, like ``30`` or ``2.5``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"not a number of seconds (more than 0): {text!r}")
    return value


def _image_parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="convert",
        description="Convert a container image's layers to EROFS and push the result. "
        "Also: convert layer|ls|cat|mirror (see convert SUBCOMMAND --help).",
    )
    p.add_argument("source", help="registry reference (ghcr.io/x:tag) or oci:DIR[:TAG]")
    p.add_argument("--to", default="erofs", help="erofs or erofs+ALGO[,level=N] (default erofs)")
    p.add_argument("--dest", help="destination reference; default: the source repository, tag <tag>-<format>")
    p.add_argument("--platform", action="append", default=[], help="OS/ARCH[/VARIANT]; repeatable")
    p.add_argument("--media-type-profile", default="spec", choices=("spec", "containerd-2.1", "containerd-2.3"))
    p.add_argument("--merge-index", action="store_true", help="keep the source manifests in the new index")
    p.add_argument("--plain-http", action="append", default=[], metavar="REGISTRY",
                   help="allow plain HTTP to this registry (loopback registries always may)")
    p.add_argument("--ca-bundle", help="PEM file of CA certificates to trust")
    p.add_argument("--retries", type=_attempts, default=None, metavar="N",
                   help="tries per registry request, the first included (default 4; 1 = never retry); "
                   "also how often a blob that arrives corrupted (digest mismatch) is downloaded")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="a registry transfer that sends or accepts nothing for SECONDS fails (and is "
                   "retried); default 60. Connecting always gives up after 10 s")
    p.add_argument("--jobs", type=int, default=0, help="layers converted at once (default: by CPU count)")
    p.add_argument("--builder", choices=("python", "mkfs"), default="python")
    p.add_argument("--max-expanded", type=_size, default=None, metavar="SIZE",
                   help="refuse a layer whose tar, or whose files together, exceed SIZE bytes "
                   "(suffixes K, M, G, T; 0 = no limit; default 64G)")
    p.add_argument("--max-entries", type=_count, default=None, metavar="N",
                   help="refuse a layer with more than N tar entries (0 = no limit; default 1000000)")
    p.add_argument("--workdir", help="temporary files go here (default: a private temp dir)")
    p.add_argument("--log-format", choices=("console", "json"), default=None)
    _encoding_flags(p)
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"erofs-converter {__version__}")
    return p


@contextlib.contextmanager
def _input(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConverterError(f"opening layer {path}: {exc.strerror}") from exc
    with f:
        yield f


def cmd_layer(argv: Sequence[str]) -> int:
    args = _layer_parser().parse_args(argv)
    from converter.blob.encoding import make_encoding
    from converter.convert.layer import (
        DEFAULT_MAX_ENTRIES,
        DEFAULT_MAX_EXPANDED,
        LayerOptions,
        convert_layer,
        default_build_time,
    )
    from converter.erofs.target import parse_format

    fmt = parse_format(args.to)
    encoding = make_encoding(args.blob_compression, chunk_size=args.chunk_size, verity=args.verity)
    options = LayerOptions(fmt=fmt, builder=args.builder, bottom=args.bottom, build_time=default_build_time(),
                           max_expanded=_limit(args.max_expanded, DEFAULT_MAX_EXPANDED),
                           max_entries=_limit(args.max_entries, DEFAULT_MAX_ENTRIES), encoding=encoding)
    options.resolved_builder()
    out = Path(args.output)
    name = "stdin" if args.input == "-" else args.input
    started = time.monotonic()
    with _input(args.input) as src:
        result = convert_layer(src, out, options=options, media_type=args.media_type, layer=name,
                               workdir=out.parent)
    if args.verbose:
        print(f"{result.digest} {result.size} bytes from {result.source_size} source bytes "
              f"({result.source_digest}) in {time.monotonic() - started:.2f}s", file=sys.stderr)
        if result.diff_id:
            print(f"diff_id {result.diff_id}", file=sys.stderr)
        for key, value in sorted(result.annotations.items()):
            print(f"{key}={value}", file=sys.stderr)
    return 0


def _fmt_mode(st_mode: int) -> str:
    return stat.filemode(st_mode)


def _fmt_time(sec: int, nsec: int) -> str:
    frac = f".{nsec:09d}" if nsec else ""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec)) + frac
    except (OverflowError, OSError, ValueError):  # beyond what the C library can show
        return f"@{sec}{frac}"


def _esc(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def cmd_ls(argv: Sequence[str]) -> int:
    args = _ls_parser().parse_args(argv)
    from converter.cli.remote import is_image_reference, open_local, remote_ls
    from converter.erofs.reader import ErofsImage, Stat

    def line(path: bytes, st: Stat, img: ErofsImage) -> str:
        size: str
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            size = f"{st.rdev_major},{st.rdev_minor}"
        else:
            size = str(st.size)
        text = f"{_fmt_mode(st.st_mode)} {st.uid}/{st.gid} {size:>10} " \
               f"{_fmt_time(st.mtime_sec, st.mtime_nsec)} {_esc(path)}"
        if stat.S_ISLNK(st.st_mode):
            text += " -> " + _esc(img.readlink(path))
        if st.nlink > 1 and not stat.S_ISDIR(st.st_mode):
            text += f" [nlink={st.nlink} ino={st.nid}]"
        if args.xattrs:
            for key, value in sorted(img.xattrs(path).items()):
                text += f"\n    {key}={_xattr_value(value)}"
        return text

    if is_image_reference(args.image):
        return remote_ls(args, line)
    with open_local(args.image) as img:
        out = sys.stdout
        want = b"/" + os.fsencode(args.path).strip(b"/")
        img.stat(want)  # a clear error when the path does not exist
        for path, st in img.walk():
            if want != b"/" and path != want and not path.startswith(want + b"/"):
                continue
            out.write(line(path, st, img) + "\n")
    return 0


def _xattr_value(value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + value.hex()
    return repr(text) if text.isprintable() else "0x" + value.hex()


def cmd_cat(argv: Sequence[str]) -> int:
    args = _cat_parser().parse_args(argv)
    from converter.cli.remote import is_image_reference, open_local, remote_cat

    if is_image_reference(args.image):
        return remote_cat(args)
    with open_local(args.image) as img:
        out = sys.stdout.buffer
        for chunk in img.read_file(args.path):
            out.write(chunk)
        out.flush()
    return 0


def cmd_image(argv: Sequence[str]) -> int:
    args = _image_parser().parse_args(argv)
    from converter.cli.image import run_image_conversion

    return run_image_conversion(args)


def cmd_mirror(argv: Sequence[str]) -> int:
    from converter.cli.mirror import run_mirror

    result: int = run_mirror(argv)
    return result


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "layer": cmd_layer,
    "ls": cmd_ls,
    "cat": cmd_cat,
    "mirror": cmd_mirror,
}


def _install_signal_handlers() -> None:
    """SIGTERM behaves like Ctrl-C (cleanup runs); a second signal kills at once."""

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _install_signal_handlers()
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        return cmd_image(argv)
    except ConverterError as exc:
        print(f"convert: {exc}", file=sys.stderr)
        return exc.exit_status
    except BrokenPipeError:  # `convert cat IMG f | head`: the reader left; say nothing more
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except FileNotFoundError as exc:  # e.g. `convert ls IMG /missing`
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"convert: {where}no such file or directory", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permissions, ...: one line, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"convert: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convert: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
