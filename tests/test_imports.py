"""The tracker's modules import one another without a cycle, type-only imports included: each
module can be read (and changed) knowing only the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

import tracker

PACKAGE = Path(tracker.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("tracker", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the package `name` imports anywhere in its text: at the top, in a
    function, or under `if TYPE_CHECKING:`. `from P import N` imports `P.N` when that is a
    module, else `P`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                imported.add(submodule if submodule in modules else base)
    return {module for module in imported if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as the path that closes it (first module repeated last), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for following in sorted(graph[node]):
            if following in on_path:
                return [*path[path.index(following) :], following]
            if following not in done:
                cycle = visit(following)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, (
        f"import cycle: {' -> '.join(cycle)}; move what one side takes from the other into a "
        "module both can import"
    )


def test_a_cycle_is_found_and_named() -> None:
    graph = {"tracker.a": {"tracker.b"}, "tracker.b": {"tracker.c"}, "tracker.c": {"tracker.a"}}
    assert find_cycle(graph) == ["tracker.a", "tracker.b", "tracker.c", "tracker.a"]
    assert find_cycle({"tracker.a": {"tracker.b"}, "tracker.b": set()}) is None


def test_the_graph_reads_type_only_and_late_imports(tmp_path: Path) -> None:
    module = tmp_path / "a.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from tracker import lifecycle\n"
        "if TYPE_CHECKING:\n"
        "    from tracker.tracker import Tracker\n"
        "def later():\n"
        "    import tracker.storage\n"
    )
    modules = {"tracker.a": module, **_modules()}
    assert _imported("tracker.a", module, modules) >= {
        "tracker.lifecycle",
        "tracker.tracker",
        "tracker.storage",
    }
