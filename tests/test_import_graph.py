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


def _top_level_names(f: Path) -> set[str]:
    """Names a module defines at top level (defs, classes, assignments, imports)."""
    out = set()
    for node in ast.parse(f.read_text(), str(f)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                out |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.If, ast.Try)):  # guarded imports and definitions
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                    out.add(sub.name)
                elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                    out |= {(a.asname or a.name).split(".")[0] for a in sub.names}
                elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    out.add(sub.id)
    return out


def _module_attribute_uses(mods: dict[str, Path]):
    """(file, line, module, attribute) for every ``alias.attr`` where ``alias`` names a plasticity
    module bound by an import and never re-bound in that file."""
    for m, f in mods.items():
        tree = ast.parse(f.read_text(), str(f))
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases |= {a.asname: a.name for a in node.names if a.asname and a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                                    + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                aliases |= {a.asname or a.name: f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods}
        rebound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        rebound |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments)
                    for a in n.args + n.kwonlyargs + n.posonlyargs}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.value.id not in rebound):
                yield f, node.lineno, aliases[node.value.id], node.attr


def test_every_module_attribute_used_exists():
    """`from . import behaviour as bh; bh._base_url(...)` broke silently when a split moved the
    helper: only a server test reached that line. Every such use must name something the module
    defines (or a submodule of it)."""
    mods = _modules()
    names = {m: _top_level_names(f) for m, f in mods.items()}
    uses = list(_module_attribute_uses(mods))
    assert len(uses) > 50  # the walk found them
    bad = [f"{f.relative_to(ROOT.parent)}:{line}: {mod}.{attr}" for f, line, mod, attr in uses
           if attr not in names[mod] and f"{mod}.{attr}" not in mods]
    assert bad == []
