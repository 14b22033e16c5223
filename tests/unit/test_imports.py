"""The edge_agent package has no import cycle (docs/DEVELOPMENT.md, "Where things live").

The graph is read from the source with ast, not from sys.modules: every `import` and `from ...
import` of an edge_agent module counts wherever it is written (at the top, inside a function,
under `if TYPE_CHECKING:`), so an import moved into a function to dodge a cycle is still
seen. It walks the package that is imported here: the source tree in a checkout, the
installed wheel under QEMU.
"""
from __future__ import annotations

import ast
from pathlib import Path

import edge_agent


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> its file, for every .py under `root` (the package `package`)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(node: ast.AST, importer: str, is_package: bool, modules: dict) -> list[str]:
    """The package's modules that one import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the importer's package, one level up per extra dot
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    named = []
    for alias in node.names:
        # `from edge_agent.platform import boards` imports the module edge_agent.platform.boards;
        # `from edge_agent.config import AgentConfig` imports edge_agent.config.
        if f"{base}.{alias.name}" in modules:
            named.append(f"{base}.{alias.name}")
        elif base in modules:
            named.append(base)
    return named


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """importer -> {imported module: line of the first import of it}, within the package."""
    modules = module_files(root, package)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _imported(node, name, path.name == "__init__.py", modules):
                if target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def tangles(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm): the
    sets of modules that all import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) through each tangle, so every tangle is named, not only the
    first."""
    return [_cycle_in(graph, component) for component in tangles(graph)]


def _cycle_in(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself (breadth first)."""
    start = min(component)
    came_from = {start: None}
    queue = [start]
    for node in queue:
        for nxt in sorted(graph[node]):
            if nxt == start:
                path = [node]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]  # path runs back to start
            if nxt in component and nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + \
        f" -> {cycle[-1]}"


def test_the_edge_agent_package_has_no_import_cycle():
    root = Path(edge_agent.__file__).resolve().parent
    graph = import_graph(root, "edge_agent")
    assert "edge_agent.api.service" in graph and "edge_agent.capture.validate" in graph
    found = tangles(graph)
    assert not found, "import cycles in edge_agent:\n" + "\n".join(
        f"{describe(graph, _cycle_in(graph, tangle))}\n  (all of {', '.join(sorted(tangle))} "
        "import each other)" for tangle in found)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_held_apart_by_an_import_inside_a_function_is_found_and_named(tmp_path):
    # The shapes the package had: a module-level import one way, a function-level one back;
    # an `from pkg import module` and a relative import; a cycle through a subpackage.
    _write(tmp_path / "pkg", {
        "__init__.py": "",
        "config.py": "import os\n\ndef load():\n    from pkg import boards\n",
        "boards.py": "from pkg.config import load\n",
        "leaf.py": "import json\n",
        "service.py": "from pkg import leaf\nfrom pkg.sub import validate\n",
        "sub/__init__.py": "",
        "sub/validate.py": "from ..service import Caller\n",
    })
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert graph["pkg.config"] == {"pkg.boards": 4}
    assert graph["pkg.sub.validate"] == {"pkg.service": 1}
    cycles = sorted(find_cycles(graph))
    assert cycles == [["pkg.boards", "pkg.config", "pkg.boards"],
                      ["pkg.service", "pkg.sub.validate", "pkg.service"]]
    assert describe(graph, cycles[0]) == \
        "pkg.boards (line 1) -> pkg.config (line 4) -> pkg.boards"


def test_a_longer_cycle_is_named_module_by_module(tmp_path):
    _write(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "import pkg.b\n",
        "b.py": "from pkg import c\n",
        "c.py": "if False:\n    from pkg.a import x\n",
        "d.py": "import pkg.a\n",  # imports into the cycle, is not part of it
    })
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    # Without the back edge there is none.
    _write(tmp_path / "pkg", {"c.py": "import json\n"})
    assert find_cycles(import_graph(tmp_path / "pkg", "pkg")) == []


def test_no_runtime_module_imports_the_tools_package():
    root = Path(edge_agent.__file__).resolve().parent
    graph = import_graph(root, "edge_agent")
    offenders = {importer: sorted(t for t in targets if t.startswith("edge_agent.tools"))
                 for importer, targets in graph.items()
                 if not importer.startswith("edge_agent.tools")}
    assert not {k: v for k, v in offenders.items() if v}, offenders
