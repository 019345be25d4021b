"""The package's import graph: no cycles (imports inside functions count too: a cycle deferred
to call time is still two modules that cannot be understood apart), and no private name
(``_x``) imported from another top-level package (``plasticity.eval`` from ``plasticity.training``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "python" / "plasticity"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(mods: dict[str, Path]):
    """(importer, imported module, names) for every import of a plasticity module."""
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods:
                        yield m, a.name, []
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [a.name for a in node.names]
                subs = [f"{target}.{n}" for n in names]
                for s in subs:
                    if s in mods:
                        yield m, s, []
                # `from pkg import submodule` (or the Rust extension) does not import pkg's own code
                if target in mods and not all(s in mods or n == "_plasticity" for s, n in zip(subs, names)):
                    yield m, target, [n for s, n in zip(subs, names) if s not in mods]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_analysis_sees_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]


def test_no_import_cycles():
    mods = _modules()
    edges = {m: set() for m in mods}
    for a, b, _ in _imports(mods):
        if a != b:
            edges[a].add(b)
    assert len(mods) > 50 and sum(map(len, edges.values())) > 100  # the walk found the package
    assert _cycles(edges) == []


def test_no_private_names_across_packages():
    mods = _modules()
    bad = []
    for a, b, names in _imports(mods):
        if a.split(".")[:2] != b.split(".")[:2]:
            bad += [f"{a} imports {b}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert bad == []
