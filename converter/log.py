"""structlog setup for the CLI: human-readable lines on a TTY, JSON lines otherwise.

Only the CLI calls ``configure``; library modules just ``structlog.get_logger()``. Logs go to
stderr so stdout stays reserved for the one result line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def _redacting(redact: Callable[[str], str]) -> structlog.types.Processor:
    """A processor passing every string of an event (exceptions already formatted) through ``redact``."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return redact(str(value))

    def processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return {key: clean(value) for key, value in event.items()}

    return processor


def resolved_format(fmt: str) -> str:
    """console or json: ``auto`` is console on a TTY, json otherwise."""
    if fmt == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return fmt


def configure(*, fmt: str = "auto", verbosity: int = 0, redact: Callable[[str], str] | None = None) -> None:
    """Route structlog to stderr; ``fmt`` is console, json or auto (console on a TTY).

    ``redact``, if given, rewrites every string of every event (and its formatted exception)
    before it is rendered: the mirror command hides expanded job-file variables with it."""
    fmt = resolved_format(fmt)
    level = LEVELS.get(max(-1, min(1, verbosity)), logging.INFO)
    renderers: list[structlog.types.Processor]
    if fmt == "json":
        # A logged exception (``log.exception``) carries its traceback as the "exception" field.
        renderers = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(sort_keys=True)]
    else:
        renderers = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    hide: list[structlog.types.Processor] = []
    if redact is not None:
        hide = [structlog.processors.format_exc_info, _redacting(redact)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *hide,
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
