"""The floor plan in figures: import circles among the product's modules, and files per package.

    .venv/bin/python bench/floor_plan.py [--no-type-checking]

A circle is a strongly connected set of two or more modules in the import graph of the product
packages (every import counts, also those inside functions; `--no-type-checking` leaves out the
imports under `if TYPE_CHECKING:`). Printed: each circle's size and modules, then the number of
`.py` files directly in each package folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("closecrm", "closesim", "transforms", "pipeline")


def circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        work = [(v, iter(sorted(graph.find_modules_directly_imported_by(v))))]
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))

    for module in sorted(graph.modules):
        if module not in index:
            strong(module)
    return sorted(out, key=len, reverse=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-type-checking", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    present = [p for p in PACKAGES if (ROOT / p / "__init__.py").exists()]
    graph = grimp.build_graph(*present, exclude_type_checking_imports=args.no_type_checking, cache_dir=None)
    found = circles(graph)
    print(f"import circles: {len(found)}" + (f" (sizes {', '.join(str(len(c)) for c in found)})" if found else ""))
    for comp in found:
        print(f"  {len(comp)}: {' '.join(comp)}")
    for package in present:
        for folder in sorted(p for p in [ROOT / package, *(ROOT / package).rglob("*")] if p.is_dir() and (p / "__init__.py").exists()):
            files = list(folder.glob("*.py"))
            print(f"{folder.relative_to(ROOT)}/: {len(files)} files, {sum(len(f.read_text().splitlines()) for f in files)} lines")
    files = list((ROOT / "closecrm").glob("*.py"))
    print(f"closecrm/ top level: {len(files)} .py files")


if __name__ == "__main__":
    main()
