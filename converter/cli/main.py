"""Command line: flags, exit codes and error rendering. Nothing imports this module.

    convert SOURCE [--to FORMAT] [--dest DEST] ...   convert an image (registry or oci:DIR)
    convert layer IN -o OUT.erofs [--to F] ...        convert one tar layer
    convert ls IMAGE.erofs [PATH] [-x]                list an EROFS image like `tar tv`
    convert cat IMAGE.erofs PATH                      print a file of an EROFS image
    convert mirror JOB.yaml ...                       run a mirroring job
    convert verify REF [--source SRC] ...             prove a converted image against its source
    convert inspect REF [--json] [-v]                 show what a converted image is made of

Exit status: 0 success, 1 failure, 2 usage, 70 internal error (a bug: its traceback is printed),
130 interrupted. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from converter import __version__
from converter.cli.args import (
    INTERNAL_ERROR,
    INTERRUPTED_EXIT,
    UsageParser,
    add_builder_flag,
    add_limit_flags,
    add_output_flags,
    add_process_flag,
    add_registry_flags,
    jobs,
    limit,
    size,
    suggest,
)
from converter.convert.tuning import limit_malloc_arenas, one_layer_at_a_time, raise_gc_threshold
from converter.errors import ConverterError, UsageError

if TYPE_CHECKING:
    from converter.erofs.reader import ErofsImage

SUBCOMMANDS = ("layer", "ls", "cat", "mirror", "verify", "inspect")


#: ``--to``'s help, for ``convert`` and ``convert layer`` (the grammar: erofs/target.py).
TO_HELP = ("erofs (raw, default) or erofs+ALGO[,level=N][,pcluster=BYTES][,ztailpacking]; "
           "ALGO: lz4, lz4hc, zstd, deflate, lzma")


def _layer_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="convert layer", description="Convert one tar layer (tar, tar+gzip, tar+zstd) to EROFS.",
                    epilog="examples:\n"
                    "  convert layer layer.tar.gz -o layer.erofs\n"
                    "  convert layer - -o layer.erofs --to erofs+zstd,level=9 --bottom < layer.tar\n"
                    "  convert layer layer.tar -o - --to erofs+lz4 | ssh host 'cat > layer.erofs'")
    p.add_argument("input", help="layer file, or - for stdin")
    p.add_argument("-o", "--output", required=True,
                   help="the EROFS image to write; - writes it to stdout (not to a terminal)")
    p.add_argument("--to", default="erofs", metavar="FORMAT", help=TO_HELP)
    p.add_argument("--bottom", action="store_true", help="the bottom layer: keep no whiteouts/opaque markers")
    add_builder_flag(p)
    p.add_argument("--media-type", help="the layer's media type, checked against its magic bytes")
    add_limit_flags(p)
    p.add_argument("--holes", action="store_true",
                   help="raw images, python builder: all-zero 4 KiB blocks of files become holes (Linux 5.15+)")
    _encoding_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="print digest, size and time on stderr")
    return p


def _encoding_flags(p: argparse.ArgumentParser) -> None:
    """``--blob-compression``, ``--chunk-size``, ``--verity``: how a layer's image goes on the wire."""
    p.add_argument("--blob-compression", default="none", metavar="KIND",
                   help="none (default), or zstd[,level=N] to wrap each layer blob in zstd (media type +zstd; "
                   "level 1..22, default 3)")
    p.add_argument("--chunk-size", type=size, default=None, metavar="SIZE",
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
                    "(REGISTRY/REPO:TAG, oci:DIR:TAG) lists its layers merged as a container sees them.",
                    epilog="examples:\n  convert ls layer.erofs\n  convert ls layer.erofs /etc -x")
    p.add_argument("image", help="the EROFS image file, or an image reference")
    p.add_argument("path", nargs="?", default="/", help="list only this directory (default /)")
    p.add_argument("-x", "--xattrs", action="store_true", help="show extended attributes")
    _image_ref_flags(p)
    return p


def _cat_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="convert cat", description="Write a file of an EROFS image to stdout; for an image "
                    "reference, of its merged layers (symlinks followed inside the image).",
                    epilog="example:\n  convert cat layer.erofs /etc/os-release")
    p.add_argument("image", help="the EROFS image file, or an image reference")
    p.add_argument("path", help="the file to print")
    _image_ref_flags(p)
    return p


def _image_parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="convert",
        description="Convert a container image's layers to EROFS and push the result; prints REF@DIGEST.\n"
        f"Also: convert {'|'.join(COMMANDS)} (see convert SUBCOMMAND --help).",
        epilog="examples:\n"
        "  convert ghcr.io/org/app:1.4 --to erofs+lz4        # pushes ghcr.io/org/app:1.4-erofs-lz4\n"
        "  convert ghcr.io/org/app:1.4 --dest registry.example/app:1.4-erofs --platform linux/amd64\n"
        "  convert oci:./layout:latest --dest oci:./out:latest\n"
        "exit status: 0 done, 1 failed, 2 usage, 70 internal error (a bug), 130 interrupted",
    )
    p.add_argument("source", help="registry reference (ghcr.io/x:tag, host:port/x@sha256:...) or oci:DIR[:TAG]")
    p.add_argument("--to", default="erofs", metavar="FORMAT", help=TO_HELP)
    p.add_argument("--dest", help="destination REPO:TAG or oci:DIR[:TAG]; default: the source repository, "
                   "tag <tag>-<format>")
    p.add_argument("--force", action="store_true", help="convert even if the destination already holds this "
                   "conversion, and allow --dest to be the source itself")
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                   help="convert only this platform of an index (repeatable; default: all)")
    p.add_argument("--media-type-profile", default="spec", choices=("spec", "containerd-2.1", "containerd-2.3"),
                   help="the media types to write, by who will pull the image: spec (the draft EROFS "
                   "layer spec, default), containerd-2.1 or containerd-2.3 (released containerd)")
    p.add_argument("--merge-index", action="store_true", help="keep the source manifests in the new index")
    p.add_argument("--no-referrer", dest="referrer", action="store_false",
                   help="do not make the source the converted image's OCI 1.1 subject (referrer)")
    add_registry_flags(p, plain_http_env="CONVERT_PLAIN_HTTP")
    p.add_argument("--layer-jobs", "--jobs", dest="layer_jobs", type=jobs, default=0, metavar="N",
                   help="layers converted at once (0 = default: by CPU count)")
    add_builder_flag(p)
    add_process_flag(p)
    add_limit_flags(p)
    p.add_argument("--workdir", metavar="DIR", help="temporary files go here (default: a private temp dir)")
    add_output_flags(p)
    _encoding_flags(p)
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
                           max_expanded=limit(args.max_expanded, DEFAULT_MAX_EXPANDED),
                           max_entries=limit(args.max_entries, DEFAULT_MAX_ENTRIES), holes=args.holes,
                           encoding=encoding)
    options.resolved_builder()
    to_stdout = args.output == "-"
    if to_stdout and sys.stdout.isatty():
        raise UsageError("layer: -o -: refusing to write an EROFS image to a terminal; redirect stdout")
    name = "stdin" if args.input == "-" else args.input
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if to_stdout:  # built in a private directory, then copied: the image is only complete at the end
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="erofs-layer-"))) / "layer.erofs"
        else:
            out = Path(args.output)
        with _input(args.input) as src, one_layer_at_a_time():
            result = convert_layer(src, out, options=options, media_type=args.media_type, layer=name,
                                   workdir=out.parent)
        if to_stdout:
            with open(out, "rb") as image:
                shutil.copyfileobj(image, sys.stdout.buffer, 1 << 20)
            sys.stdout.buffer.flush()
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
    from converter.erofs.reader import Stat

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


def _lazy(name: str, argv: Sequence[str]) -> int:
    """Run ``converter.cli.NAME.main(argv)``, imported only when that subcommand is used."""
    import importlib

    result: int = importlib.import_module(f"converter.cli.{name}").main(argv)
    return result


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "layer": cmd_layer,
    "ls": cmd_ls,
    "cat": cmd_cat,
    "mirror": cmd_mirror,
    "verify": lambda argv: _lazy("verify", argv),
    "inspect": lambda argv: _lazy("inspect", argv),
}


def _install_signal_handlers() -> None:
    """SIGTERM behaves like Ctrl-C (cleanup runs); a second signal kills at once."""

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether the command line asks for JSON logs (then the final error is a JSON line too)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--log-format=json" or (arg == "--log-format" and argv[i + 1 : i + 2] == ["json"]):
            return True
    return False


def _unknown_command(argv: Sequence[str]) -> None:
    """Refuse a first word that is no image reference but looks like a mistyped subcommand."""
    if not argv or argv[0] in COMMANDS or argv[0].startswith("-"):
        return
    word = argv[0]
    if any(c in word for c in "/:.@"):  # a registry, a path, a tag or a digest: a reference
        return
    close = suggest(word, list(COMMANDS))
    if close is not None:
        raise UsageError(f"unknown command {word!r}: did you mean 'convert {close}'? (an image on Docker Hub "
                         f"is docker.io/library/{word}:TAG)")


class _Stderr:
    """Writes the final message: one "convert: ..." line, or one JSON object with --log-format json."""

    def __init__(self, json_lines: bool) -> None:
        self.json_lines = json_lines

    def __call__(self, message: str, *, status: int, event: str = "error", trace: str = "") -> None:
        if self.json_lines:
            record = {"event": event, "level": "error", "error": message, "exit_status": status,
                      "timestamp": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")}
            if trace:
                record["exception"] = trace
            print(json.dumps(record, sort_keys=True), file=sys.stderr)
            return
        print(f"convert: {message}", file=sys.stderr)
        if trace:
            print(trace, end="", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    raise_gc_threshold()  # once per process
    limit_malloc_arenas()  # before the command starts its threads
    _install_signal_handlers()
    say = _Stderr(_wants_json(argv))
    try:
        _unknown_command(argv)
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        return cmd_image(argv)
    except ConverterError as exc:
        say(str(exc), status=exc.exit_status)
        return exc.exit_status
    except BrokenPipeError:  # `convert cat IMG f | head`: the reader left; say nothing more
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except FileNotFoundError as exc:  # e.g. `convert ls IMG /missing`
        where = f"{exc.filename}: " if exc.filename else ""
        say(f"{where}no such file or directory", status=1)
        return 1
    except OSError as exc:  # disk full, permissions, ...: one line, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        say(f"{where}{exc.strerror or exc}", status=1)
        return 1
    except KeyboardInterrupt:
        say("interrupted", status=INTERRUPTED_EXIT, event="interrupted")
        return INTERRUPTED_EXIT
    except Exception as exc:  # a bug: reported as one, never disguised as a user error
        say(f"internal error: {type(exc).__name__}: {exc}", status=INTERNAL_ERROR, event="internal_error",
            trace="".join(traceback.format_exception(exc)))
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
