#!/usr/bin/env python3
"""Fails when the crate's top-level modules import each other in a cycle.

    scripts/module-graph.py [--print]

Reads every `crate::<module>` path in src/ outside comments and test
modules (`#[cfg(test)] mod … { … }`), and checks the graph of
top-level modules for cycles. `--print` shows the graph."""
import pathlib
import re
import sys

src = pathlib.Path(__file__).resolve().parent.parent / "src"


def without_test_modules(code):
    """The code without `#[cfg(test)] mod name { … }` blocks."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", code):
        if m.start() < i:
            continue
        out.append(code[i : m.start()])
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        i = j
    out.append(code[i:])
    return "".join(out)
graph = {}
for path in src.rglob("*.rs"):
    rel = path.relative_to(src)
    module = rel.parts[0].removesuffix(".rs")
    if module in ("lib", "main"):
        continue
    text = path.read_text()
    code = "\n".join(line.split("//")[0] for line in text.splitlines())
    code = without_test_modules(code)
    deps = set(re.findall(r"\bcrate::([a-z_]+)", code)) - {module}
    graph.setdefault(module, set()).update(deps)

if "--print" in sys.argv:
    for m in sorted(graph):
        print(f"{m} -> {', '.join(sorted(graph[m])) or '-'}")

# Depth-first search for a cycle.
state, stack = {}, []


def visit(m):
    state[m] = "open"
    stack.append(m)
    for d in sorted(graph.get(m, ())):
        if state.get(d) == "open":
            cycle = stack[stack.index(d):] + [d]
            sys.exit("module cycle: " + " -> ".join(cycle))
        if d not in state:
            visit(d)
    stack.pop()
    state[m] = "done"


for m in sorted(graph):
    if m not in state:
        visit(m)
print(f"module graph: {len(graph)} modules, no cycles")
