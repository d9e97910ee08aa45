#!/usr/bin/env python3
"""Print the modules over 400 lines and the functions over 60 lines in pipeline/, extractors/
and models/ (the project's size limits: docs/ARCHITECTURE.md), longest first.

    python tools/shape.py            # the offenders
    python tools/shape.py --top 10   # the 10 longest modules and functions, whatever their size
Exit status 0 either way: a report, not a gate.
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "extractors", "models")
MODULE_LINES, FUNCTION_LINES = 400, 60


def functions(tree: ast.AST, path: str):
    """(lines, "path:line name") of every function and method, nested ones included."""
    stack = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield child.end_lineno - child.lineno + 1, f"{path}:{child.lineno} {name}()"
                stack.append((child, name + "."))
            elif isinstance(child, ast.ClassDef):
                stack.append((child, f"{prefix}{child.name}."))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--top", type=int, default=None, help="show the N longest instead of the offenders")
    a = p.parse_args()
    modules, funcs = [], []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            text = f.read_text()
            rel = str(f.relative_to(ROOT))
            modules.append((len(text.splitlines()), rel))
            funcs += list(functions(ast.parse(text), rel))
    modules.sort(reverse=True)
    funcs.sort(reverse=True)
    if a.top:
        modules, funcs = modules[:a.top], funcs[:a.top]
    else:
        modules = [m for m in modules if m[0] > MODULE_LINES]
        funcs = [f for f in funcs if f[0] > FUNCTION_LINES]
    print(f"modules{'' if a.top else f' over {MODULE_LINES} lines'}: {len(modules)}")
    for n, name in modules:
        print(f"  {n:5d}  {name}")
    print(f"functions{'' if a.top else f' over {FUNCTION_LINES} lines'}: {len(funcs)}")
    for n, name in funcs:
        print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main()
