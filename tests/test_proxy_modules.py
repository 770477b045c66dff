"""The proxy's module layout: imports run one way, policy modules stay pure, modules stay small."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PROXY = Path(__file__).resolve().parents[1] / "prevu" / "proxy"
# The policy and its vocabulary: stdlib without I/O, attrs, and each other.
PURE = ("admission", "forwarding", "framing", "deadlines", "contracts", "hooks", "http", "pages")
PURE_PREVU = {"prevu.routing", *(f"prevu.proxy.{name}" for name in PURE)}
NO_IO_STDLIB = {
    "__future__", "collections", "typing", "re", "ipaddress", "html", "http", "datetime"
}
NO_IO_MODULES = {"urllib.parse"}  # urllib.request is I/O, its parse module is not


def imports(module: Path) -> set[str]:
    """Every module `module` imports, at any depth (TYPE_CHECKING blocks and functions count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
    return found


def proxy_modules() -> dict[str, set[str]]:
    """Module name -> the prevu.proxy modules it imports."""
    return {
        path.stem: {
            name.removeprefix("prevu.proxy.")
            for name in imports(path)
            if name.startswith("prevu.proxy.")
        }
        for path in PROXY.glob("*.py")
    }


def test_no_import_circle_in_the_proxy() -> None:
    graph = proxy_modules()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import circle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for imported in sorted(graph.get(name, ())):
            visit(imported, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


@pytest.mark.parametrize("name", PURE)
def test_policy_modules_import_no_adapter(name: str) -> None:
    """No Twisted, no httptools, no sockets or threads: only stdlib, attrs and pure prevu."""
    for imported in imports(PROXY / f"{name}.py"):
        top = imported.split(".")[0]
        allowed = (
            imported in PURE_PREVU
            or top == "attrs"
            or imported in NO_IO_MODULES
            or (top in NO_IO_STDLIB and top in sys.stdlib_module_names)
        )
        assert allowed, f"prevu.proxy.{name} imports {imported}"


@pytest.mark.parametrize("path", sorted(PROXY.glob("*.py")), ids=lambda path: path.name)
def test_no_proxy_module_is_over_700_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 700
