"""`convert inspect REF`: what a converted image is made of (the logic is in converter.verify.inspect)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from converter.cli.args import UsageParser
from converter.cli.image import LocationOpener
from converter.verify.inspect import inspect_image, render


def parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="convert inspect", description="Show the platforms and layers of a converted image.")
    p.add_argument("image", help="registry reference or oci:DIR[:TAG]")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="also list each layer's files, like ls -l")
    p.add_argument("--plain-http", action="append", default=[], metavar="REGISTRY")
    p.add_argument("--ca-bundle", help="PEM file of CA certificates to trust")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    opener = LocationOpener(plain_http=args.plain_http, ca_bundle=args.ca_bundle)

    try:
        image, _ = opener(args.image)
        info = inspect_image(image, args.image, files=args.verbose, open_location=opener)
    finally:
        opener.close()
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(info))
    return 0
