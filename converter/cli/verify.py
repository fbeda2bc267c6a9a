"""`convert verify REF`: flags in, one line per problem out (the logic is in converter.verify)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from converter import log as logsetup
from converter.cli.args import UsageParser
from converter.cli.args import limit as layer_limit
from converter.cli.image import LocationOpener, parse_platforms
from converter.convert.layer import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_EXPANDED
from converter.verify.run import VerifyOptions, verify_image


def parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="convert verify",
                    description="Check a converted image's structure and, against its source, every file.")
    p.add_argument("image", help="registry reference or oci:DIR[:TAG] of the converted image")
    p.add_argument("--source", help="the source image (default: the one recorded in the image's annotations)")
    p.add_argument("--no-source", action="store_true", help="check the structure only")
    p.add_argument("--platform", action="append", default=[], help="OS/ARCH[/VARIANT]; repeatable")
    p.add_argument("--report", help="write a JSON report to this file")
    p.add_argument("--plain-http", action="append", default=[], metavar="REGISTRY")
    p.add_argument("--ca-bundle", help="PEM file of CA certificates to trust")
    p.add_argument("--workdir", help="temporary files go here (default: a private temp dir)")
    p.add_argument("--log-format", choices=("console", "json"), default=None)
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    logsetup.configure(fmt=args.log_format or "auto", verbosity=-1 if args.quiet else 0)
    options = VerifyOptions(
        platforms=parse_platforms(args.platform),
        source="" if args.no_source else args.source,
        max_expanded=layer_limit(None, DEFAULT_MAX_EXPANDED),
        max_entries=layer_limit(None, DEFAULT_MAX_ENTRIES),
        workdir=Path(args.workdir) if args.workdir else None,
    )
    opener = LocationOpener(plain_http=args.plain_http, ca_bundle=args.ca_bundle)

    try:
        image, _ = opener(args.image)
        report = verify_image(image, args.image,
                              options=options, open_location=opener, log=structlog.get_logger())
    finally:
        opener.close()
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for problem in report.problems:
        print(problem.line())
    if args.report:
        report.write(Path(args.report))
    if not args.quiet:
        state = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"verify {args.image}@{report.digest}: {state} ({report.layers_checked} layers, "
              f"{report.files_compared} files compared)", file=sys.stderr)
    return 0 if report.ok else 1
