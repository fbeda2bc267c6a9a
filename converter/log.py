"""structlog setup for the CLI: human-readable lines on a TTY, JSON lines otherwise.

Only the CLI calls ``configure``; library modules just ``structlog.get_logger()``. Logs go to
stderr so stdout stays reserved for the one result line.
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def resolved_format(fmt: str) -> str:
    """console or json: ``auto`` is console on a TTY, json otherwise."""
    if fmt == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return fmt


def configure(*, fmt: str = "auto", verbosity: int = 0) -> None:
    """Route structlog to stderr; ``fmt`` is console, json or auto (console on a TTY)."""
    fmt = resolved_format(fmt)
    level = LEVELS.get(max(-1, min(1, verbosity)), logging.INFO)
    renderers: list[structlog.types.Processor]
    if fmt == "json":
        # A logged exception (``log.exception``) carries its traceback as the "exception" field.
        renderers = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(sort_keys=True)]
    else:
        renderers = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
