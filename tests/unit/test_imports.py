"""The edge_agent package has no import cycle, and its packages import only what their layer
allows (docs/DEVELOPMENT.md, "Where things live").

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


# --- the layers: which package may import which ---------------------------------------------
#
# The same table the packages' __init__ docstrings state in words (docs/DEVELOPMENT.md has the
# map). A package is edge_agent's second name (edge_agent.models.engine is in "models"); the
# public modules at the top (client, shm_client, __main__) are a row each. Every import counts,
# a lazy one inside a function too.

# Modules any package may import: small and low, they import nothing of edge_agent but each
# other. config's own imports (the machine's architectures, the version rules) are among them;
# api.caller (who calls, the model-name rule), models.model_files (opening a file safely),
# capture.durable (fsync'd directories) and transport.socket_files (the socket files the fronts
# and the metrics exposition serve on) are the shared helpers that live with their owner.
SHARED = {
    "edge_agent", "edge_agent.errors", "edge_agent.agent_pb2", "edge_agent.config",
    "edge_agent.platform.machine", "edge_agent.packaging.versions", "edge_agent.api.caller",
    "edge_agent.models.model_files", "edge_agent.capture.durable",
    "edge_agent.transport.socket_files",
}

ALL = {"protocol", "platform", "packaging", "shm", "observe", "models", "capture", "api",
       "transport", "fleet", "app", "client", "shm_client", "tools"}

# importer -> the packages it may import, besides its own and SHARED.
MAY_IMPORT = {
    "protocol": set(),  # sans-IO: bytes and frames only
    "platform": set(),  # this machine
    "packaging": {"platform"},
    "shm": {"protocol", "platform"},
    "observe": {"platform"},
    "models": {"protocol", "observe", "packaging", "platform"},
    "capture": {"protocol", "observe", "platform"},
    "api": {"protocol", "models", "capture", "shm", "observe", "packaging", "platform"},
    "transport": {"api", "protocol", "observe", "platform"},
    "fleet": {"capture", "models", "observe", "packaging", "platform"},
    "app": ALL - {"app"},  # the composition root; tools only inside the CLI's commands (below)
    "shm_client": {"protocol", "shm"},
    "client": {"api", "protocol", "transport", "shm", "shm_client"},
    "__main__": {"app"},
    "tools": ALL - {"tools", "app"},
}

# Standard modules that do I/O or keep time: the protocol imports none of them (the loops move
# the bytes and pass the time in).
IO_MODULES = {"socket", "select", "selectors", "ssl", "subprocess", "threading", "asyncio",
              "fcntl", "tempfile", "time", "mmap", "signal", "shutil"}

# Imports that break the table today, each with the work that removes it. An entry that no
# longer happens fails the test too: delete it with the import.
KNOWN = {
    # The watchdog's health check asks the agent through its own client: the composition root
    # is to hand it the check instead.
    ("edge_agent.platform.systemd", "edge_agent.client"),
}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(graph: dict[str, dict[str, int]]) -> set[tuple[str, str]]:
    """(importer, imported) for every import across packages that MAY_IMPORT does not allow."""
    found = set()
    for importer, targets in graph.items():
        if importer in SHARED:
            found.update((importer, t) for t in targets if t not in SHARED)
            continue
        mine = package_of(importer)
        allowed = MAY_IMPORT[mine] | {mine}
        found.update((importer, t) for t in targets
                     if t not in SHARED and package_of(t) not in allowed)
    return found


def _package_graph() -> dict[str, dict[str, int]]:
    return import_graph(Path(edge_agent.__file__).resolve().parent, "edge_agent")


def test_every_package_is_in_the_table():
    packages = {package_of(m) for m in _package_graph()} - {"", "errors", "agent_pb2", "config"}
    assert packages == set(MAY_IMPORT)


def test_the_table_is_layers():
    """No two packages may import each other, however indirectly: the table has no cycle."""
    table = {name: dict.fromkeys(allowed, 0) for name, allowed in MAY_IMPORT.items()}
    assert not tangles(table)


def test_each_package_imports_only_what_its_layer_allows():
    graph = _package_graph()
    found = layer_violations(graph)
    new = sorted(found - KNOWN)
    assert not new, "imports the layers do not allow (tests/unit/test_imports.py, MAY_IMPORT):\n" \
        + "\n".join(f"{a} (line {graph[a][b]}) -> {b}" for a, b in new)
    gone = sorted(KNOWN - found)
    assert not gone, f"no longer imported, delete from KNOWN: {gone}"


def test_a_forbidden_import_is_found_and_a_lazy_one_too(tmp_path):
    _write(tmp_path / "edge_agent", {
        "__init__.py": "",
        "errors.py": "",
        "protocol/__init__.py": "",
        "protocol/frames.py": "from edge_agent.errors import X\n",
        "protocol/bad.py": "def f():\n    from edge_agent.api import rpcs\n",
        "api/__init__.py": "",
        "api/rpcs.py": "from edge_agent.protocol import frames\n",
    })
    graph = import_graph(tmp_path / "edge_agent", "edge_agent")
    assert layer_violations(graph) == {("edge_agent.protocol.bad", "edge_agent.api.rpcs")}


def test_the_protocol_imports_no_io_module():
    root = Path(edge_agent.__file__).resolve().parent / "protocol"
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}:{node.lineno} {name}" for name in names
                      if name.split(".")[0] in IO_MODULES]
    assert not found, found


def _imports_outside_functions(path: Path) -> set[str]:
    """The modules `path` imports when it is imported (not inside a def)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    in_functions = {id(inner) for node in ast.walk(tree)
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for inner in ast.walk(node)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in in_functions:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
    return names


def test_nothing_the_agent_serves_with_imports_the_tools():
    # demo and bench ship as `edge-agent` commands: the CLI imports them inside those commands
    # only. What a serving process loads is checked by tests/e2e/test_serve_imports.py.
    graph = _package_graph()
    importers = sorted(importer for importer, targets in graph.items()
                       if package_of(importer) != "tools"
                       and any(package_of(t) == "tools" for t in targets))
    assert importers == ["edge_agent.app.cli"]
    cli = Path(edge_agent.__file__).resolve().parent / "app" / "cli.py"
    assert not {m for m in _imports_outside_functions(cli) if m.startswith("edge_agent.tools")}


def test_the_top_of_the_package_stays_small():
    """At most a dozen modules and packages side by side at the top of edge_agent, besides the
    entry points, the generated protobuf module, the tools and the public modules applications
    import (issue 20's count)."""
    root = Path(edge_agent.__file__).resolve().parent
    entries = {path.name.split(".")[0] for path in root.iterdir()
               if path.suffix == ".py" or (path / "__init__.py").exists()}
    entries -= {"__init__", "__main__", "agent_pb2", "tools", "client", "shm_client", "errors"}
    assert len(entries) <= 12, sorted(entries)
