"""Modules and functions stay small enough to read in one sitting.

Limits: a module of at most MAX_MODULE_LINES lines, a function (or method) of at most
MAX_FUNCTION_LINES lines, decorators and docstring included. `vitdsi/` keeps both; `bench/`
lists its larger modules and functions with their size today, and the list may only shrink:
an entry that grows, or one that is fixed but still listed, fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

# bench/ today: "path" (a module) or "path::qualified.name" (a function) -> its lines now
ALLOWED: dict[str, int] = {}


def sizes(package: str) -> dict[str, int]:
    """Lines of every module of `package` over MAX_MODULE_LINES and of every function in it over
    MAX_FUNCTION_LINES, keyed as in ALLOWED."""
    out: dict[str, int] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        n_lines = len(text.splitlines())
        if n_lines > MAX_MODULE_LINES:
            out[rel] = n_lines
        for name, lines in function_lines(ast.parse(text, filename=rel)):
            if lines > MAX_FUNCTION_LINES:
                out[f"{rel}::{name}"] = lines
    return out


def function_lines(tree: ast.AST, prefix: str = ""):
    """(qualified name, lines from its first decorator to its last line) of every function,
    nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = prefix + node.name
            if not isinstance(node, ast.ClassDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                yield name, node.end_lineno - first + 1
            yield from function_lines(node, name + ".")
        else:
            yield from function_lines(node, prefix)


def test_measure_counts_decorators_and_nested_functions():
    tree = ast.parse(
        "class A:\n    @staticmethod\n    def f():\n        def g():\n            pass\n        return 1\n"
    )
    assert dict(function_lines(tree)) == {"A.f": 5, "A.f.g": 2}


def test_vitdsi_modules_and_functions_are_small():
    over = sizes("vitdsi")
    assert not over, (
        f"over {MAX_MODULE_LINES} lines a module or {MAX_FUNCTION_LINES} a function; split them: "
        + ", ".join(f"{k} ({v})" for k, v in sorted(over.items()))
    )


def test_bench_large_modules_and_functions_only_shrink():
    over = sizes("bench")
    new = {k: v for k, v in over.items() if k not in ALLOWED}
    assert not new, "over the limits and not in ALLOWED; split them: " + ", ".join(
        f"{k} ({v})" for k, v in new.items()
    )
    grown = {k: (ALLOWED[k], v) for k, v in over.items() if k in ALLOWED and v > ALLOWED[k]}
    assert not grown, f"grew past their allowed size (allowed, now): {grown}"
    fixed = sorted(set(ALLOWED) - set(over))
    assert not fixed, f"now within the limits: remove from ALLOWED: {fixed}"
