"""fastmlp's layers: imports flow one way, with no cycle (README, "Layout").

Every module of the installed package is parsed (Python with ast; the Cython .pyx / .pxi / .pxd
line by line) for the fastmlp modules it imports. Each module belongs to the layer of its
subpackage, and a layer may import only the layers below it (and itself):

    0  fastmlp._version, fastmlp.datasets   the version; data sets (NumPy only)
    1  fastmlp.core                         compiled kernels, TrainStep, reference, testing
    2  fastmlp.io                           model files: the format, knowing no model class
    3  fastmlp.model                        MLP, optim
    4  fastmlp.estimators                   scikit-learn's estimators: the only scikit-learn user
    5  fastmlp.tools                        CLI, profiler, benchmark helpers
    6  fastmlp                              the facade (fastmlp/__init__.py, __main__.py)

Besides: no import cycle between modules, no function-local import unless it says it is there
on purpose (an optional dependency imported lazily), and scikit-learn is imported by
fastmlp.estimators only. The checker is tested on graphs made to break each rule.
"""
import ast
import os
import re
from pathlib import Path

import pytest

import fastmlp

LAYERS = {"fastmlp._version": 0, "fastmlp.datasets": 0, "fastmlp.core": 1, "fastmlp.io": 2,
          "fastmlp.model": 3, "fastmlp.distributed": 4, "fastmlp.estimators": 5,
          "fastmlp.tools": 6, "fastmlp": 7}
SOURCES = (".py", ".pyx", ".pxi", ".pxd")
ON_PURPOSE = "on purpose"
CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\s+(.+)|c?import\s+([\w.]+))")


def layer_of(module):
    """The LAYERS key a module belongs to: its longest prefix."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        if name in LAYERS:
            return name
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and the README's table")


def module_name(root, path):
    """fastmlp.core._native for <root>/fastmlp/core/_native.pyx; packages by their __init__."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(importer, is_package, level, target):
    """The absolute name of a relative import `from <level dots><target>` in importer."""
    if level == 0:
        return target
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(root, path):
    """[(imported module, line number, function-local, the import's text and the line above)]:
    every import in one source file; `from X import Y` names X.Y when that is a module."""
    modules = {module_name(root, p) for p in iter_sources(root)}
    importer = module_name(root, path)
    is_package = path.stem == "__init__"
    text = path.read_text()
    lines = text.splitlines()
    found = []

    def add(name, names, lineno, local):
        context = lines[lineno - 1] + "\n" + (lines[lineno - 2] if lineno > 1 else "")
        targets = [f"{name}.{n}" for n in names if f"{name}.{n}" in modules] or [name]
        found.extend((t, lineno, local, context) for t in targets)

    if path.suffix == ".py":
        tree = ast.parse(text)
        local_lines = {n.lineno for f in ast.walk(tree)
                       if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    add(a.name, [], node.lineno, node.lineno in local_lines)
            elif isinstance(node, ast.ImportFrom):
                name = resolve(importer, is_package, node.level, node.module or "")
                add(name, [a.name for a in node.names], node.lineno, node.lineno in local_lines)
    else:   # Cython, line by line: an indented import counts as function-local
        for lineno, line in enumerate(lines, 1):
            m = CYTHON_IMPORT.match(line)
            if not m:
                continue
            if m.group(1):
                level = len(m.group(1)) - len(m.group(1).lstrip("."))
                name = resolve(importer, is_package, level, m.group(1).lstrip("."))
                names = [n.strip().split()[0] for n in m.group(2).strip("()").split(",")
                         if n.strip()]
                add(name, names, lineno, line[:1].isspace())
            else:
                add(m.group(3), [], lineno, line[:1].isspace())
    return found


def iter_sources(root):
    return sorted(p for p in (root / "fastmlp").rglob("*") if p.suffix in SOURCES)


def graph_of(root):
    """{module: [(imported module, line, local, context), ...]} over the package's sources."""
    graph = {}
    for path in iter_sources(root):
        graph.setdefault(module_name(root, path), []).extend(imports_of(root, path))
    return graph


def problems(graph):
    """Every broken rule of the layering, as readable lines."""
    out = []
    for importer, imports in sorted(graph.items()):
        mine = layer_of(importer)
        for target, line, local, context in imports:
            top = target.split(".")[0]
            if top == "sklearn" and mine != "fastmlp.estimators":
                out.append(f"{importer}:{line} imports scikit-learn (only fastmlp.estimators "
                           "may)")
            if local and ON_PURPOSE not in context:
                out.append(f"{importer}:{line} imports {target} inside a function without "
                           f"saying it is {ON_PURPOSE} (an optional dependency, lazily)")
            if top != "fastmlp":
                continue
            theirs = layer_of(target)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                out.append(f"{importer}:{line} ({mine}, layer {LAYERS[mine]}) imports "
                           f"{target} ({theirs}, layer {LAYERS[theirs]}): imports flow down")
    # cycles: depth-first search over the module graph
    edges = {m: sorted({t for t, *_ in imports if t in graph and t != m})
             for m, imports in graph.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == "open":
                out.append("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return out


PACKAGE_ROOT = Path(fastmlp.__file__).resolve().parent.parent


def test_the_package_keeps_its_layers():
    found = problems(graph_of(PACKAGE_ROOT))
    assert not found, "\n".join(found)


def test_every_module_is_in_a_layer_and_was_parsed():
    graph = graph_of(PACKAGE_ROOT)
    for module in graph:
        layer_of(module)
    # the parser sees the imports that hold the layers together
    assert ("fastmlp.core._native" in {t for t, *_ in graph["fastmlp.core"]})
    assert "fastmlp.core.contract" in {t for t, *_ in graph["fastmlp.core._native"]}
    assert "fastmlp.io" in {t for t, *_ in graph["fastmlp.model.mlp"]}
    assert "sklearn.base" in {t for t, *_ in graph["fastmlp.estimators.mlp"]}


def _graph(edges):
    return {m: [(t, 1, False, "") for t in ts] for m, ts in edges.items()}


@pytest.mark.parametrize("edges,expected", [
    ({"fastmlp.core.reference": ["fastmlp.model"], "fastmlp.model": []}, "imports flow down"),
    ({"fastmlp.io": ["fastmlp.estimators.mlp"], "fastmlp.estimators.mlp": []},
     "imports flow down"),
    ({"fastmlp.tools.cli": ["fastmlp"], "fastmlp": []}, "imports flow down"),
    ({"fastmlp.datasets": ["fastmlp.core"], "fastmlp.core": []}, "imports flow down"),
    ({"fastmlp.model.mlp": ["fastmlp.model.optim"], "fastmlp.model.optim": ["fastmlp.model.mlp"]},
     "import cycle: fastmlp.model.mlp -> fastmlp.model.optim -> fastmlp.model.mlp"),
    ({"fastmlp.model.mlp": ["sklearn.base"]}, "imports scikit-learn"),
])
def test_the_checker_catches_each_broken_rule(edges, expected):
    found = problems(_graph(edges))
    assert any(expected in p for p in found), found


def test_the_checker_catches_an_unexplained_local_import():
    graph = {"fastmlp.model.mlp": [("fastmlp.io", 7, True, "    from .. import io")]}
    assert any("inside a function" in p for p in problems(graph))
    graph = {"fastmlp.model.mlp": [("fastmlp.io", 7, True, "    # on purpose\n")]}
    assert problems(graph) == []


def test_downward_and_same_layer_imports_are_fine():
    assert problems(_graph({"fastmlp": ["fastmlp.estimators"], "fastmlp.estimators": [
        "fastmlp.estimators.mlp"], "fastmlp.estimators.mlp": ["fastmlp.core", "sklearn.base"],
        "fastmlp.core": []})) == []


def test_it_reads_the_installed_sources():
    """The package is checked where it is imported from (the installed wheel in CI), and its
    Cython sources ship with it."""
    assert os.path.exists(PACKAGE_ROOT / "fastmlp" / "core" / "_native.pyx")
    assert os.path.exists(PACKAGE_ROOT / "fastmlp" / "core" / "contract.pxd")
