"""The longest functions (by source lines, decorators and docstring included) under the given directories.

    .venv/bin/python bench/longest_functions.py [--top 10] [closecrm transforms ...]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def functions(path: Path) -> list[tuple[int, str]]:
    """(lines, "file:line qualified.name") for every function and method in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                assert child.end_lineno is not None
                name = f"{prefix}{child.name}"
                out.append((child.end_lineno - start + 1, f"{rel}:{child.lineno} {name}"))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("dirs", nargs="*", default=["closecrm", "transforms"], help="directories or files")
    args = ap.parse_args(argv)
    found: list[tuple[int, str]] = []
    for d in args.dirs:
        base = Path(d) if Path(d).is_absolute() else ROOT / d
        for path in [base] if base.is_file() else sorted(base.rglob("*.py")):
            found.extend(functions(path))
    for lines, where in sorted(found, key=lambda f: (-f[0], f[1]))[: args.top]:
        print(f"{lines:5d}  {where}")


if __name__ == "__main__":
    main()
