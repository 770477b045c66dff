"""
The layering rule of docs/architecture.md, checked on the source.

1. A module of the pure core imports only from an ALLOWLIST: the standard
   library minus the modules that do I/O or run things concurrently
   (`IO_MODULES`), `attrs`, and other pure prevu modules (`PURE`). Imports
   inside functions count: the whole module is walked, not just its top.
2. No module under `prevu/` is longer than `MAX_LINES` lines.

`os` is refused (it spawns processes, opens files, reads the environment);
`os.path` is allowed, because joining and splitting path names is string work.
`secrets` is allowed: tokens need randomness and the core takes none from the
clock. Builtins (`open`) are not imports and are not seen here: the config
loader's `open` of the file it is given is the one documented exception.

To add a module to the pure core, add its dotted name to `PURE`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "prevu"
MAX_LINES = 700

PURE: tuple[str, ...] = (
    "prevu.errors",
    "prevu.ports",
    "prevu.units",
    "prevu.naming",
    "prevu.routing",
    "prevu.repoconfig",
    "prevu.backoff",
    "prevu.endpoints",
    "prevu.reactors",
    "prevu.lifecycle",
    "prevu.config",
    "prevu.forge",
    "prevu.forge.events",
    "prevu.forge.github",
    "prevu.forge.gitlab",
    "prevu.forge.policy",
    "prevu.auth.rules",
    "prevu.auth.tokens",
    "prevu.auth.passwords",
    "prevu.auth.limiter",
    "prevu.auth.authority",
    "prevu.revisions",
    "prevu.labels",
    "prevu.appmodel",
    "prevu.compose",
    "prevu.compose.check",
    "prevu.compose.write",
    "prevu.orchestrator.reconcile",
    "prevu.orchestrator.heal",
    "prevu.runtime",
    "prevu.masking",
    "prevu.feedback.view",
    "prevu.feedback.comment",
    "prevu.proxy.admission",
    "prevu.proxy.forwarding",
    "prevu.proxy.framing",
    "prevu.proxy.deadlines",
    "prevu.proxy.contracts",
    "prevu.proxy.hooks",
    "prevu.proxy.http",
    "prevu.control.views",
    "prevu.control.operators",
    "prevu.proxy.pages",
    "prevu.swarm",
    "prevu.swarm.spec",
)
"""The pure core (docs/architecture.md): add orchestrator planning, proxy policy here."""

IO_MODULES = frozenset(
    {
        "os", "io", "sys", "socket", "ssl", "select", "selectors", "signal", "subprocess",
        "multiprocessing", "threading", "_thread", "concurrent", "asyncio", "queue",
        "sqlite3", "dbm", "shelve", "pickle", "shutil", "tempfile", "glob", "fileinput",
        "pathlib", "mmap", "fcntl", "pty", "tty", "termios", "resource", "ctypes",
        "http.client", "http.server", "http.cookiejar", "urllib.request", "urllib.error",
        "urllib.response", "ftplib", "smtplib",
        "imaplib", "poplib", "telnetlib", "socketserver", "xmlrpc", "webbrowser",
        "logging", "time", "random", "uuid", "getpass", "platform", "importlib",
    }
)
"""Standard library modules a pure module may not import (or import from)."""

ALLOWED_THIRD_PARTY = frozenset({"attrs", "attr"})

OVERSIZED = {
}
"""Modules known to be over MAX_LINES while their split is under way elsewhere."""


def _source(module: str) -> Path:
    relative = Path(*module.split("."))
    package = ROOT / relative / "__init__.py"
    return package if package.exists() else ROOT / relative.with_suffix(".py")


def _pure_modules() -> list[str]:
    """`PURE`, with every module of a pure package (`prevu.config.*`, `prevu.forge.*`)."""
    modules = set(PURE)
    for name in PURE:
        path = _source(name)
        if path.name == "__init__.py":
            for child in path.parent.glob("*.py"):
                if child.name != "__init__.py":
                    modules.add(f"{name}.{child.stem}")
    return sorted(modules)


def imported(module: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in `module`, at any depth, relative ones resolved."""
    path = _source(module)
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                # `from os import path` and `from prevu.forge import github` name modules.
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if _is_module(candidate) else base))
    return found


def _is_module(name: str) -> bool:
    if name == "os.path":
        return True
    if not name.startswith("prevu."):
        return False
    return _source(name).exists()


def refusal(name: str, pure: frozenset[str]) -> str | None:
    """Why a pure module may not import `name`, or None when it may."""
    top = name.split(".")[0]
    if name == "__future__" or name == "os.path":
        return None
    if top == "prevu":
        return None if name in pure else "is not a pure prevu module"
    if top in ALLOWED_THIRD_PARTY:
        return None
    if top not in sys.stdlib_module_names:
        return "is not in the standard library, attrs or the pure core"
    if any(name == io or name.startswith(io + ".") for io in IO_MODULES):
        return "does I/O (or runs things concurrently)"
    return None


@pytest.mark.parametrize("module", _pure_modules())
def test_pure_modules_import_only_the_allowlist(module: str) -> None:
    """A pure module imports the standard library minus I/O, attrs and pure prevu modules only."""
    pure = frozenset(_pure_modules())
    problems = [
        f"{module}:{line} imports {name}: {reason}"
        for line, name in imported(module)
        if (reason := refusal(name, pure)) is not None
    ]
    assert not problems, "\n".join(problems)


def test_the_allowlist_refuses_io_twisted_and_adapters() -> None:
    """The check itself can fail: Twisted, sockets, os and adapters are refused."""
    pure = frozenset(_pure_modules())
    for name in ("twisted.internet.defer", "socket", "os", "subprocess", "sqlite3",
                 "threading", "prevu.adapters.git", "klein", "urllib.request", "http.client",
                 "prevu.idle", "prevu.control.app"):
        assert refusal(name, pure) is not None, name
    for name in ("attrs", "re", "hmac", "os.path", "urllib.parse", "prevu.units", "http"):
        assert refusal(name, pure) is None, name


def _sizes() -> list[object]:
    cases: list[object] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        reason = OVERSIZED.get(relative)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        cases.append(pytest.param(relative, marks=marks, id=relative))
    return cases


@pytest.mark.parametrize("relative", _sizes())
def test_no_module_is_longer_than_the_limit(relative: str) -> None:
    """Every module under prevu/ has at most MAX_LINES lines."""
    lines = len((ROOT / relative).read_text().splitlines())
    assert lines <= MAX_LINES, f"{relative} has {lines} lines (limit {MAX_LINES})"


NO_CYCLES: tuple[str, ...] = (
    "prevu.control",
    "prevu.forge",
    "prevu.config",
    "prevu.orchestrator",
    "prevu.proxy",
)
"""Packages whose modules import each other without a circle."""


def _modules_of(package: str) -> list[str]:
    directory = _source(package).parent
    return sorted(
        package if path.name == "__init__.py" else f"{package}.{path.stem}"
        for path in directory.glob("*.py")
    )


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (module → modules it imports), or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            found = visit(target)
            if found:
                return found
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start)
        if found:
            return found
    return None


@pytest.mark.parametrize("package", NO_CYCLES)
def test_no_import_circle_inside_the_package(package: str) -> None:
    """Modules of the package import each other one way only (TYPE_CHECKING imports count)."""
    modules = _modules_of(package)
    graph = {
        module: {name for _, name in imported(module) if name in modules and name != module}
        for module in modules
    }
    assert _cycle(graph) is None


def test_the_cycle_check_finds_a_circle() -> None:
    """The circle finder itself can fail."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_orchestrator_facade_stays_small() -> None:
    """`prevu/orchestrator/engine.py` is a facade: at most 300 lines (issue 8)."""
    lines = len((PACKAGE / "orchestrator" / "engine.py").read_text().splitlines())
    assert lines <= 300, f"prevu/orchestrator/engine.py has {lines} lines"
