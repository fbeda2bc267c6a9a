"""Compiled copies of the per-entry modules (mypyc), used only while they match the sources.

The modules in ``MODULES`` run once per tar entry or per inode: tar header parsing, the layer
normaliser, metadata layout and writing, the compressed writer's bookkeeping. They are plain,
fully annotated Python; ``scripts/build_native.py`` (run by ``make setup``) compiles them with
mypyc into extension modules next to their sources, which Python's importer prefers to the
``.py`` files. Same code, same bytes, about 20 % less time on a layer of 50,000 small files
(README.md, Performance). A ``pip install`` without that step simply runs the sources.

A compiled module must never run in place of a source that has changed since: the build writes
``MANIFEST`` with the size and modification time of every ``.py`` file of the package, and
``install()`` (called when ``converter`` is imported) compares them. If any differs, if the
manifest was made for another Python, or if ``EROFS_CONVERTER_NATIVE=0`` is set, every module of
``MODULES`` is loaded from its source instead (all or none: compiled modules of one build call
each other directly, not through ``sys.modules``). ``status()`` says which and why.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["ENV", "LOOP_LIBRARY", "MANIFEST", "MODULES", "fingerprint", "install", "status"]

#: The modules compiled by scripts/build_native.py, in one group (one shared library).
MODULES = (
    "converter.layers.model",
    "converter.layers.tarstream",
    "converter.layers.normalise",
    "converter.erofs.format",
    "converter.erofs.layout",
    "converter.erofs.writer",
    "converter.erofs.zwriter",
    "converter.erofs.zindex",
    "converter.erofs.zmap",
    "converter.convert.entries",
)
#: Written by the build next to this file (not in git).
MANIFEST = Path(__file__).with_name("_native.json")
#: The compiled extent loop (converter/erofs/zloop.c) as the build names it: not ``.so``, which
#: Python's importer and ``pkgutil`` would take for an extension module.
LOOP_LIBRARY = Path(__file__).parent / "erofs" / "_zloop.cdll"
#: ``EROFS_CONVERTER_NATIVE=0`` runs the sources even where a matching build exists.
ENV = "EROFS_CONVERTER_NATIVE"

_PACKAGE = Path(__file__).parent
_status = "pure: not checked yet"


def fingerprint(package: Path = _PACKAGE) -> dict[str, list[int]]:
    """Size and modification time (ns) of every ``.py`` and ``.c`` file under ``package`` (the
    modules' sources and converter/erofs/zloop.c, which the build compiles too), by relative path."""
    out: dict[str, list[int]] = {}
    stack = [package]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(Path(entry.path))
                elif entry.name.endswith((".py", ".c")):
                    st = entry.stat()
                    out[os.path.relpath(entry.path, package)] = [st.st_size, st.st_mtime_ns]
    return out


def python_tag() -> str:
    """What a build is only good for: this interpreter's extension-module suffix."""
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def _why_not_native(manifest: Path, package: Path) -> str | None:
    """None if the compiled modules match the sources here, else why they are not used."""
    if os.environ.get(ENV, "") == "0":
        return f"{ENV}=0"
    try:
        recorded = json.loads(manifest.read_text())
    except FileNotFoundError:
        return "not built (make setup builds it)"
    except (OSError, ValueError) as exc:
        return f"unreadable {manifest.name}: {exc}"
    if not isinstance(recorded, dict) or recorded.get("python") != python_tag():
        return f"built for another Python ({recorded.get('python') if isinstance(recorded, dict) else '?'})"
    if recorded.get("sources") != fingerprint(package):
        return "the sources changed since the build (make setup rebuilds it)"
    return None


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the modules of ``MODULES`` as their ``.py`` sources, ignoring compiled copies."""

    def __init__(self, package: Path) -> None:
        self._package = package

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        source = self._package.joinpath(*fullname.split(".")[1:]).with_suffix(".py")
        return importlib.util.spec_from_file_location(fullname, source)


def install(manifest: Path = MANIFEST, package: Path = _PACKAGE) -> str:
    """Decide, once per process, whether the compiled modules may be imported; the status."""
    global _status
    why = _why_not_native(manifest, package)
    if why is None:
        _status = "native"
    else:
        if not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
            sys.meta_path.insert(0, _SourceFirst(package))
        _status = f"pure: {why}"
    return _status


def status() -> str:
    """"native", or "pure: <why>" (see the module docstring)."""
    return _status
