"""bridger's modules import one another in one direction only: no circles.

A circle (``a`` imports ``b``, which imports ``a``, often hidden in a function
body so that it happens to work) means two modules are one concern split in
two, or that something both need belongs in a module below them. This walks
every module of the package with :mod:`ast` and builds the graph of the
imports that run: at module level and inside functions, but not those under
``if TYPE_CHECKING:`` (annotations only, never executed). An edge goes to the
module named, or to the submodule when ``from package import name`` names one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "bridger"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Each module's dotted name and its file (a package is its ``__init__.py``)."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _run_time_imports(
    node: ast.AST, typing: bool = False
) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node`` except those under ``if TYPE_CHECKING:``
    (``typing``: those too)."""
    for child in ast.iter_child_nodes(node):
        if not typing and isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _run_time_imports(other)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _run_time_imports(child, typing)


def imports_of(name: str, path: Path, modules: dict[str, Path], typing: bool = False) -> set[str]:
    """The bridger modules ``name`` (at ``path``) imports when it runs
    (``typing``: or for its annotations only)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for stmt in _run_time_imports(ast.parse(path.read_text(), str(path)), typing):
        if isinstance(stmt, ast.Import):
            targets = [alias.name for alias in stmt.names]
        else:
            if stmt.level:
                base = name.split(".")
                base = base[: len(base) - stmt.level + (1 if is_package else 0)]
                origin = ".".join(base + ([stmt.module] if stmt.module else []))
            else:
                origin = stmt.module or ""
            # ``from package import submodule``: the edge goes to the submodule.
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules
                       else origin for alias in stmt.names]
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph(typing: bool = False) -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules, typing) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` (its modules, the first repeated at the end), or None."""
    WHITE, GREY, BLACK = 0, 1, 2  # the usual depth-first colours
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        colour[start] = GREY
        path = [start]
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                colour[path.pop()] = BLACK
                stack.pop()
            elif colour[nxt] == GREY:
                return [*path[path.index(nxt):], nxt]
            elif colour[nxt] == WHITE:
                colour[nxt] = GREY
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_walk_sees_module_level_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "bridger.protocol.device" in graph["bridger.protocol"]  # from .device import ...
    assert "bridger.shell.assembly" in graph["bridger.daemon"]
    assert "bridger.daemon" in graph["bridger.cli"]  # inside _cmd_up


def test_find_cycle_on_small_graphs() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_no_import_circles_among_bridger_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_circles_even_through_annotations() -> None:
    """Issue 22: the layers point downward also for the type checker (a peer's
    concept modules see ``PeerState`` below them, the forwarder its lane as a
    small protocol), so a reader follows every arrow one way."""
    cycle = find_cycle(import_graph(typing=True))
    assert cycle is None, "import circle through annotations: " + " -> ".join(cycle or [])


#: Packages in the order they may import one another: each only those after it
#: (the protocol core and the modules beside it are below all of these).
LAYERS = ("bridger.cli", "bridger.daemon", "bridger.service", "bridger.shell")


def test_the_daemon_assembles_and_nothing_below_imports_upwards() -> None:
    graph = import_graph()

    def layer(module: str) -> int | None:
        for i, top in enumerate(LAYERS):
            if module == top or module.startswith(top + "."):
                return i
        return None

    upward = sorted((a, b) for a, targets in graph.items() for b in targets
                    if (la := layer(a)) is not None and (lb := layer(b)) is not None
                    and lb < la)
    assert upward == []
    assert "bridger.service.live" in graph["bridger.daemon"]
