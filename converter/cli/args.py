"""Argument parsing shared by every subcommand: a parser that raises UsageError, value types, flag groups.

``converter.cli.main`` prints every error the same way ("convert: …", exit status 2 for usage),
so parsers must not print and exit on their own.
"""

from __future__ import annotations

import argparse
import difflib
import math
from collections.abc import Sequence
from typing import Any, NoReturn

from converter.convert.layer import Builder
from converter.errors import UsageError

INTERNAL_ERROR = 70  # exit status for a bug (EX_SOFTWARE in sysexits.h); its traceback is printed
INTERRUPTED_EXIT = 130  # SIGINT/SIGTERM, as a shell reports 128 + SIGINT


class UsageParser(argparse.ArgumentParser):
    """argparse raising UsageError; the message names the subcommand, main() adds "convert: ".

    Abbreviated long options are refused (``--de`` is not ``--dest``), and the epilog (examples)
    keeps its line breaks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sub = self.prog.removeprefix("convert").strip()
        raise UsageError(f"{sub}: {message}" if sub else message)


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The choice ``word`` was probably meant to be (a typo), if any."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


# --- value types -------------------------------------------------------------------------------

_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(text: str) -> int:
    """A byte count like ``512``, ``64M`` or ``2G`` (binary multiples; a trailing B or iB is allowed)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, suffix = (value[:-1], value[-1]) if value[-1:] in ("K", "M", "G", "T") else (value, "")
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512, 64M, 2G)")
    return int(number) * _SIZE_SUFFIXES[suffix]


def count(text: str) -> int:
    """A non-negative whole number."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return int(text)


def jobs(text: str) -> int:
    """A number of things done at once: 1 or more, or 0 for the default."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not a number of jobs (1 or more; 0 = the default): {text!r}")
    return int(text)


def attempts(text: str) -> int:
    """A number of tries: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a number of tries (1 or more): {text!r}")
    return int(text)


def seconds(text: str) -> float:
    """A positive, finite duration in seconds, like ``30`` or ``2.5``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"not a number of seconds (more than 0): {text!r}")
    return value


def limit(value: int | None, default: int) -> int | None:
    """A ``--max-expanded``/``--max-entries`` value as a limit: absent (None) is the default, 0 is
    None (no limit)."""
    if value is None:
        return default
    return value or None


# --- flag groups -------------------------------------------------------------------------------


def add_limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-expanded", type=size, default=None, metavar="SIZE",
                   help="refuse a layer whose tar, or whose files together, exceed SIZE bytes "
                   "(suffixes K, M, G, T; 0 = no limit; default 64G)")
    p.add_argument("--max-entries", type=count, default=None, metavar="N",
                   help="refuse a layer with more than N tar entries (0 = no limit; default 1000000)")


def _builder(text: str) -> Builder:
    try:
        return Builder(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown builder {text!r}; choose one of "
                                         f"{', '.join(b.value for b in Builder)}") from None


def add_builder_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--builder", type=_builder, choices=list(Builder), default=Builder.AUTO,
                   help="auto (default) and python: our own writer, for every format; mkfs: mkfs.erofs "
                   "(>= 1.9.3), fed a normalised tar")


def add_process_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--build-processes", action=argparse.BooleanOptionalAction, default=None,
                   help="build each layer in a process of its own, so that layers use several cores "
                   "(default: on with more than one layer job and at least 4 CPUs)")


def add_registry_flags(p: argparse.ArgumentParser, *, plain_http_env: str) -> None:
    p.add_argument("--plain-http", action="append", default=[], metavar="REGISTRY",
                   help=f"allow plain HTTP to this registry (repeatable; also ${plain_http_env}); "
                   "loopback registries always may")
    p.add_argument("--ca-bundle", metavar="PEM", help="CA certificates to trust besides the system's")
    p.add_argument("--retries", type=attempts, default=None, metavar="N",
                   help="tries per registry request, the first included (default 4; 1 = never retry); "
                   "also how often a blob that arrives corrupted (digest mismatch) is downloaded")
    p.add_argument("--timeout", type=seconds, default=None, metavar="SECONDS",
                   help="a registry transfer that sends or accepts nothing for SECONDS fails (and is "
                   "retried); default 60. Connecting always gives up after 10 s")
    p.add_argument("--deadline", type=seconds, default=None, metavar="SECONDS",
                   help="a registry answer read whole (manifest, tag list page, token, error) that has "
                   "not fully arrived after SECONDS fails; default 300")


def add_output_flags(p: argparse.ArgumentParser) -> None:
    """--log-format and -q/-v (which exclude each other)."""
    p.add_argument("--log-format", choices=("console", "json"), default=None,
                   help="log lines on stderr: console (readable) or json (one object a line, errors "
                   "included); default: console on a terminal, else json")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors; no progress bars")
    loud.add_argument("-v", "--verbose", action="store_true", help="log debug lines too (every registry request)")


def verbosity(args: argparse.Namespace) -> int:
    return -1 if args.quiet else (1 if args.verbose else 0)
