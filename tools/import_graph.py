"""Print the import graph of the ``anomaly`` package and check its layering contract.

Every import statement counts, including those inside functions (they are there only
to keep start-up fast, not to hide a dependency). The contract:

1. a package imports only packages of the same or a lower stage (``LAYERS``), and two
   packages of the same stage do not import each other;
2. no import cycle between modules.

Usage: ``python tools/import_graph.py`` prints one line per package with what it
imports, then the violations; exit status 1 when there is one.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "anomaly"

#: Stage of every top-level part of the package (data flow from low to high).
LAYERS = {
    "__init__": 0, "__main__": 9, "constants": 0,
    "io": 1,
    "preprocess": 2,
    "atlas": 3, "registration": 3,
    "qc": 4,
    "normative": 5, "simulate": 5,
    "crs": 6,
    "report": 7,
    "cli": 8,
}


def module_name(path: Path) -> str:
    """Dotted module name of a file of the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules of ``anomaly`` imported anywhere in ``path`` (absolute names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "anomaly")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name.split(".")[0] != "anomaly":
                continue
            for alias in node.names:  # "from anomaly.io import images" imports a module
                candidate = f"{name}.{alias.name}"
                found.add(candidate if _is_module(candidate) else name)
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (type hints, not dependencies)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", getattr(child.test, "attr", None)) == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def top(name: str) -> str:
    """Top-level part of a module name: ``anomaly.io.bids`` -> ``io``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def build_graph() -> dict[str, set[str]]:
    """Module -> imported modules of the package."""
    return {module_name(p): imports_of(p) - {module_name(p)} for p in sorted(PACKAGE.rglob("*.py"))}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher stage, or of a sibling package of the same stage."""
    problems = []
    for module, targets in graph.items():
        for target in sorted(targets):
            a, b = top(module), top(target)
            if a == b or b == "__init__" and target == "anomaly":
                continue
            if a not in LAYERS or b not in LAYERS:
                problems.append(f"{module} -> {target}: {a if a not in LAYERS else b} has no stage in LAYERS")
            elif LAYERS[b] >= LAYERS[a]:
                problems.append(f"{module} -> {target}: stage {b} ({LAYERS[b]}) is not below {a} ({LAYERS[a]})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (each reported once, from its smallest module).

    A package's ``__init__`` re-exporting its own modules is not a cycle edge: those
    modules import siblings directly, never through the package.
    """
    edges = {m: {t for t in ts if t in graph and not (m == t.rsplit(".", 1)[0] and _is_package(m))}
             for m, ts in graph.items()}
    found, seen = [], set()
    for start in sorted(edges):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(edges[node]):
                if nxt == start:
                    key = frozenset(path)
                    if key not in seen and min(path) == start:
                        seen.add(key)
                        found.append(path + [start])
                elif nxt not in path and nxt > start:
                    stack.append((nxt, path + [nxt]))
    return found


def _is_package(name: str) -> bool:
    return (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").exists()


def main() -> int:
    graph = build_graph()
    by_package = defaultdict(set)
    for module, targets in graph.items():
        by_package[top(module)].update(top(t) for t in targets if top(t) != top(module))
    for package in sorted(by_package, key=lambda p: (LAYERS.get(p, 99), p)):
        print(f"{LAYERS.get(package, '?')} {package:<11} -> {', '.join(sorted(by_package[package])) or '-'}")
    problems = layer_violations(graph) + [" -> ".join(c) for c in cycles(graph)]
    for line in problems:
        print(f"violation: {line}")
    print(f"{len(graph)} modules, {len(problems)} violation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
