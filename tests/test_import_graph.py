"""No import circle among the project's modules, counting imports inside functions too.

An in-function import hides a circle from Python at import time but not from a reader: the
two modules still cannot be understood, tested or moved apart. The graph is read from the
source with `ast`, so nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vitdsi", "bench")

# vitdsi's layers, lowest first: a module may import its own layer or lower ones, never higher
LAYERS = (
    ("vitdsi.data", "vitdsi.ranking", "vitdsi.features"),
    ("vitdsi.models",),
    ("vitdsi.training",),
    ("vitdsi.retrievers",),
)

# circles known today, each as its modules in order starting at the smallest name; this list
# may only shrink
ALLOWED_CYCLES: list[tuple[str, ...]] = []


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module named by an import statement anywhere in `tree` (module level, in functions,
    under TYPE_CHECKING), with `from a import b` also naming `a.b` (b may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a package's own submodules excluded: a package
    that imports its submodules to fill a registry is their parent, not a circle with them)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = {t for t in imported_names(tree, name, path.name == "__init__.py") if t in modules}
        graph[name] = {
            t for t in targets if t != name and not (path.name == "__init__.py" and t.startswith(name + "."))
        }
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """One shortest circle through each module that lies on a circle, rotated to start at its
    smallest name, without repeats."""
    cycles: set[tuple[str, ...]] = set()
    for start in sorted(graph):
        # breadth-first from start's successors back to start: the shortest circle through it
        parents: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for node in frontier:
                for succ in sorted(graph[node]):
                    if succ == start:
                        found = node
                        break
                    if succ not in parents and succ != start:
                        parents[succ] = node
                        nxt.append(succ)
                if found is not None:
                    break
            frontier = nxt
        if found is None:
            continue
        path = [found]
        while path[-1] != start:
            path.append(parents[path[-1]])
        cycle = tuple(reversed(path))
        i = cycle.index(min(cycle))
        cycles.add(cycle[i:] + cycle[:i])
    return sorted(cycles)


def in_function_imports(tree: ast.AST):
    """Every import statement inside a function body of `tree`."""
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    yield node


def test_vitdsi_imports_its_own_modules_at_module_top():
    """Inside a function, vitdsi imports only heavy optional libraries, each saying why."""
    bad = []
    for name, path in project_modules().items():
        if not name.startswith("vitdsi"):
            continue
        text = path.read_text()
        lines = text.splitlines()
        for node in in_function_imports(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if getattr(node, "level", 0) or any(n.split(".")[0] in PACKAGES for n in names):
                bad.append(f"{where}: project module {names} imported in a function; import it at the top")
            elif "#" not in lines[node.end_lineno - 1]:
                bad.append(f"{where}: in-function import of {names} needs a trailing comment saying why")
    assert not bad, "\n".join(bad)


def test_bench_imports_its_own_modules_at_module_top():
    """Outside the CLI commands (which import on use, so that `bench --help` starts at once; see
    bench/cli.py), the harness imports project modules at module top; the one kind of exception,
    an import that would close a circle at import time, says so in a comment on the line above."""
    bad = []
    for name, path in project_modules().items():
        if not name.startswith("bench") or name.startswith("bench.commands"):
            continue
        lines = path.read_text().splitlines()
        for node in in_function_imports(ast.parse("\n".join(lines))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
            project = getattr(node, "level", 0) or any(n.split(".")[0] in PACKAGES for n in names)
            if project and "imported here" not in lines[node.lineno - 2]:
                bad.append(
                    f"{path.relative_to(ROOT)}:{node.lineno}: project module {names} imported in a "
                    "function; import it at the top (or say why not on the line above)"
                )
    assert not bad, "\n".join(bad)


def layer_of(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def test_vitdsi_layers_import_downwards():
    """e.g. features/ (FAISS indexes) never reaches up into retrievers/ for the Ranking type."""
    up = [
        f"{a} -> {b}"
        for a, targets in import_graph().items()
        for b in sorted(targets)
        if layer_of(a) is not None and layer_of(b) is not None and layer_of(b) > layer_of(a)
    ]
    assert not up, (
        "imports up the layers (data/ranking/features < models < training < retrievers): " + ", ".join(up)
    )


def test_cycle_finder_sees_a_circle_and_its_absence():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_imports_are_read_from_function_bodies_and_relative_forms():
    tree = ast.parse("def f():\n    from vitdsi.data import split\n    from . import ranking\n")
    names = imported_names(tree, "vitdsi.features.faiss_index", is_package=False)
    assert {"vitdsi.data.split", "vitdsi.features.ranking"} <= names


def test_no_import_circle():
    cycles = find_cycles(import_graph())
    new = [c for c in cycles if c not in ALLOWED_CYCLES]
    assert not new, "import circle(s): " + "; ".join(" -> ".join((*c, c[0])) for c in new)
    gone = [c for c in ALLOWED_CYCLES if c not in cycles]
    assert not gone, f"no longer a circle, remove from ALLOWED_CYCLES: {gone}"
