"""An argparse parser that raises UsageError instead of exiting, shared by every subcommand.

``converter.cli.main`` prints every error the same way ("convert: …", exit status 2 for usage),
so parsers must not print and exit on their own.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from converter.errors import UsageError

INTERNAL_ERROR = 70  # exit status for a bug (EX_SOFTWARE in sysexits.h); its traceback is printed
INTERRUPTED_EXIT = 130  # SIGINT/SIGTERM, as a shell reports 128 + SIGINT


class UsageParser(argparse.ArgumentParser):
    """argparse raising UsageError; the message names the subcommand, main() adds "convert: "."""

    def error(self, message: str) -> NoReturn:
        sub = self.prog.removeprefix("convert").strip()
        raise UsageError(f"{sub}: {message}" if sub else message)
