"""Import directions between the packages of ``converter`` (docs/architecture.md draws them).

Like go-containerregistry's ``cmd/crane/depcheck_test.go``: the layering is checked, not hoped
for. Each unit (a top-level module or package of ``converter``) may import only the units listed
for it; a new unit must be added here (and to the drawing) before it can be imported at all.
Third-party libraries with a boundary of their own are pinned to their package too: only
``registry`` speaks HTTP.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "converter"

#: unit -> the units it may import ("converter" is the root package: ``__version__``).
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "log": frozenset(),
    "native": frozenset(),  # which modules run compiled; imported by the root package
    "reference": frozenset({"errors"}),
    "cancel": frozenset({"errors"}),
    "files": frozenset({"errors"}),
    "levels": frozenset({"errors"}),
    "units": frozenset(),  # sizes as people read them (human_bytes)
    "blob": frozenset({"errors", "cancel", "files", "levels"}),
    "oci": frozenset({"errors", "reference"}),
    "layers": frozenset({"errors", "oci", "reference"}),
    "erofs": frozenset({"errors", "cancel", "layers", "levels", "native"}),
    "convert": frozenset({"errors", "cancel", "files", "reference", "oci", "layers", "erofs", "blob"}),
    "registry": frozenset({"converter", "errors", "cancel", "reference", "oci"}),
    "transports": frozenset({"errors", "cancel", "files", "reference", "oci", "registry"}),
    "imageview": frozenset({"errors", "cancel", "files", "reference", "oci", "layers", "erofs", "blob",
                            "transports"}),
    "pipeline": frozenset({"converter", "errors", "cancel", "files", "reference", "oci", "layers", "erofs",
                           "convert", "transports", "blob"}),
    "verify": frozenset({"converter", "errors", "cancel", "files", "reference", "oci", "layers", "erofs", "convert",
                         "transports", "pipeline", "blob"}),
    "mirror": frozenset({"converter", "errors", "cancel", "files", "reference", "oci", "layers", "erofs", "convert",
                         "registry", "transports", "pipeline", "verify", "blob", "units"}),
}
#: the edges of the product: cli may import every product unit, testing every unit but cli.
PRODUCT = frozenset(ALLOWED) | {"converter"}
ALLOWED["cli"] = PRODUCT
ALLOWED["testing"] = PRODUCT
ALLOWED["converter"] = frozenset({"native"})

#: third-party modules that only one unit may import: the boundary where their errors are converted.
CONFINED = {"httpx": "registry", "httpcore": "registry"}
#: known exceptions, each to be removed: (path relative to converter/, module).
EXCEPTIONS: set[tuple[str, str]] = set()


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "converter"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def _type_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:``: annotations only, no runtime edge."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for inner in node.body:
                lines.update(n.lineno for n in ast.walk(inner) if isinstance(n, ast.Import | ast.ImportFrom))
    return lines


def _imports(path: Path) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_only(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and node.lineno in skip:
            continue
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "converter":  # ``from converter import __version__`` or a unit
                out.extend((node.lineno, f"converter.{alias.name}") for alias in node.names)
            else:
                out.append((node.lineno, node.module))
    return out


def _violations() -> list[str]:
    problems = []
    for module, path in _modules():
        unit = _unit(module)
        if unit not in ALLOWED:
            problems.append(f"{path}: unit {unit!r} is not in ALLOWED (add it and its allowed imports)")
            continue
        for line, imported in _imports(path):
            top = imported.split(".")[0]
            if top == "converter":
                target = _unit(imported)
                if target == "__version__":
                    target = "converter"
                if target != unit and target not in ALLOWED[unit]:
                    problems.append(f"{path}:{line}: {unit} must not import {imported}")
            elif (top in CONFINED and CONFINED[top] != unit and unit != "testing"
                  and (path.relative_to(PACKAGE).as_posix(), top) not in EXCEPTIONS):
                problems.append(f"{path}:{line}: only {CONFINED[top]} may import {top} (found in {unit})")
    return problems


def test_imports_point_down_the_layers() -> None:
    assert _violations() == []


def test_the_check_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lower layer importing an upper one is reported with file and line."""
    fake = tmp_path / "converter"
    (fake / "erofs").mkdir(parents=True)
    (fake / "erofs" / "bad.py").write_text("from converter.pipeline import engine\nimport httpx\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    problems = _violations()
    assert any("bad.py:1: erofs must not import converter.pipeline" in p for p in problems), problems
    assert any("bad.py:2: only registry may import httpx" in p for p in problems), problems


def test_nothing_in_the_product_imports_cli_or_testing() -> None:
    for unit, allowed in ALLOWED.items():
        if unit not in {"cli", "testing"}:
            assert not allowed & {"cli", "testing"}, unit
