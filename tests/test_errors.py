"""converter/errors.py holds the whole exception tree, and its drawing matches the classes."""

from __future__ import annotations

import importlib
import pkgutil
import re

import converter
from converter import errors
from converter.errors import ConverterError

_SKIP = {"converter.cli.__main__"}  # runs the CLI when imported


def _import_everything() -> None:
    """Import every module of the package, so every ConverterError subclass anywhere exists."""
    for info in pkgutil.walk_packages(converter.__path__, prefix="converter."):
        if info.name not in _SKIP:
            importlib.import_module(info.name)


def _drawn_tree() -> dict[str, str | None]:
    """The module docstring's drawing as {class: parent class} (the root's parent is None)."""
    doc = errors.__doc__ or ""
    lines = [line for line in doc.splitlines() if re.match(r"\s+(ConverterError|[│├└ ]*[├└]── )", line)]
    assert lines and lines[0].strip().startswith("ConverterError"), doc
    indent0 = len(lines[0]) - len(lines[0].lstrip())
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in lines:
        match = re.match(r"([\s│├└─]*)([A-Za-z]+)", line)
        assert match, line
        depth = (len(match.group(1)) - indent0) // 4
        name = match.group(2)
        del stack[depth:]
        parents[name] = stack[-1] if stack else None
        stack.append(name)
    return parents


def _real_tree() -> dict[str, str | None]:
    parents: dict[str, str | None] = {"ConverterError": None}
    pending = [ConverterError]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            assert sub.__module__ == "converter.errors", f"{sub.__qualname__} is defined in {sub.__module__}"
            assert sub.__name__ not in parents, f"two classes named {sub.__name__}"
            parents[sub.__name__] = cls.__name__
            pending.append(sub)
    return parents


def test_the_drawing_matches_the_classes() -> None:
    _import_everything()
    assert _drawn_tree() == _real_tree()


def test_one_cancellation_error() -> None:
    _import_everything()
    names = {name for name in _real_tree() if "cancel" in name.lower()}
    assert names == {"Cancelled"}
    from converter.registry.retry import RequestCancelled

    assert RequestCancelled is errors.Cancelled


def test_a_job_file_error_is_a_usage_error() -> None:
    error = errors.JobFileError("missing", file="job.yaml", line=3, field="images")
    assert isinstance(error, errors.UsageError) and error.exit_status == 2
    assert str(error) == "job.yaml:3: images: missing"
