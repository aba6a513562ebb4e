#!/usr/bin/env python3
"""Import circles between the modules of each crate of the workspace: between the
top-level modules of a crate, and between the children of each directory module
(`pipeline/shard.rs` and `pipeline/global.rs` are siblings under `pipeline`).

A module `a` uses `b` when its non-test code (before `#[cfg(test)]`, comments left out)
names `crate::b` (top level), or `super::b` / `crate::<dir>::b` (siblings in a
directory). Prints each crate's strongly connected groups of two or more modules and
exits 1 when any crate has one.

usage: scripts/module-cycles.py
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = ["src", "config/src", "ingest/src", "kafka/src", "features/src", "trainer/src", "drift/src", "sinks/src", "job/src"]


def uses(src):
    """module -> the modules of the same crate it names."""
    graph = {}
    for path in sorted(src.rglob("*.rs")):
        module = path.relative_to(src).parts[0].removesuffix(".rs")
        if module in ("lib", "main"):
            continue
        text = path.read_text().split("#[cfg(test)]")[0]
        code = "\n".join(l for l in text.splitlines() if not l.strip().startswith("//"))
        named = set(re.findall(r"crate::([a-z_0-9]+)", code)) - {module}
        graph.setdefault(module, set()).update(named)
    return graph


def sibling_uses(src):
    """For each directory module under `src`: its path and the graph of its children."""
    graphs = []
    for mod_rs in sorted(src.rglob("mod.rs")):
        folder = mod_rs.parent
        prefix = "::".join(folder.relative_to(src).parts)
        children = {p.stem for p in folder.glob("*.rs") if p.name != "mod.rs"}
        children |= {p.name for p in folder.iterdir() if (p / "mod.rs").is_file()}
        graph = {}
        for path in sorted(folder.rglob("*.rs")):
            rel = path.relative_to(folder).parts
            if rel == ("mod.rs",):
                continue
            child = rel[0].removesuffix(".rs")
            text = path.read_text().split("#[cfg(test)]")[0]
            code = "\n".join(l for l in text.splitlines() if not l.strip().startswith("//"))
            named = set()
            if len(rel) == 1:
                named |= set(re.findall(r"super::([a-z_0-9]+)", code))
            named |= set(re.findall(rf"crate::{prefix}::([a-z_0-9]+)", code))
            graph.setdefault(child, set()).update((named & children) - {child})
        graphs.append((prefix, graph))
    return graphs


def circles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    bad = 0
    for crate in CRATES:
        src = ROOT / crate
        if not src.is_dir():
            continue
        found = circles(uses(src))
        for prefix, graph in sibling_uses(src):
            found += [[f"{prefix}::{m}" for m in group] for group in circles(graph)]
        bad += len(found)
        nested = len(sibling_uses(src))
        scope = f" (top level and {nested} directory module(s))" if nested else ""
        print(f"{crate}: {'no import circles' + scope if not found else found}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
