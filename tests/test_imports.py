"""The import graph of phi3_jax/ has no circle and no upward edge (docs/ARCHITECTURE.md's layers).

Read from the source with `ast`; nothing is imported. Every import statement of a file is an edge
(`import phi3_jax.x`, `from phi3_jax.x import y`, `from . import y`), at module level or inside a
function: a deferred import dodges a circle at load time but the two modules still depend on each
other. Loading a submodule from outside its package runs the package's `__init__` first, so that
is an edge to the `__init__` too.
"""

from __future__ import annotations

import ast
import collections
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Layer of each module, by the longest dotted prefix that names it; an import may only point to
# the same layer or a lower one. Within a layer only the circle check applies.
LAYERS = {
    # 0: leaves, no phi3_jax imports.
    "phi3_jax": 0,  # the package's __init__ (a docstring)
    "phi3_jax.paths": 0,
    "phi3_jax.errors": 0,
    "phi3_jax.vocab": 0,
    # 1: the configuration schema, its defaults and validation.
    "phi3_jax.config": 1,
    # 2: what the model and the step build on: devices, mesh and shardings (and TPU slices' compile-
    # only devices); the data pipeline; FLOP counts (formulas over the config).
    "phi3_jax.distributed": 2,
    "phi3_jax.sharding": 2,
    "phi3_jax.data": 2,
    "phi3_jax.flops": 2,
    "phi3_jax.tpu": 2,
    # 3: the model families.
    "phi3_jax.model": 3,
    # 4: checkpoints and metrics of a run.
    "phi3_jax.checkpoint": 4,
    "phi3_jax.metrics": 4,
    # 5: the train state, optimizer and jitted steps.
    "phi3_jax.train": 5,
    # 6: what composes them: the training loop and every entry point.
    "phi3_jax.train.loop": 6,
    "phi3_jax.train.__main__": 6,
    "phi3_jax.generate": 6,
    "phi3_jax.eval": 6,
    "phi3_jax.posttrain": 6,
    "phi3_jax.serve": 6,
    "phi3_jax.longrope": 6,
    "phi3_jax.convert": 6,
    "phi3_jax.aot": 6,
    "phi3_jax.plot": 6,
    # The offline data tools are entry points too (`python -m phi3_jax.data.prepare`, ...): they
    # decontaminate against the eval tasks and label or write text through the server. Nothing
    # below imports them; the online pipeline (sources, pipeline, tokenizer, ...) stays in 2.
    "phi3_jax.data.prepare": 6,
    "phi3_jax.data.quality": 6,
    "phi3_jax.data.annotate": 6,
    "phi3_jax.data.decontaminate": 6,
    "phi3_jax.data.synthetic": 6,
    "phi3_jax.data.synthetic_llm": 6,
}
# What a recipe in configs/ may import from phi3_jax: the schema and the leaf modules.
CONFIGS_MAY_IMPORT = 1


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


MODULES = _modules("phi3_jax")


def _is_package(name: str, modules: dict[str, pathlib.Path]) -> bool:
    return modules[name].name == "__init__.py"


def _targets(node, name: str, modules: dict[str, pathlib.Path]) -> set[str]:
    """The modules of `modules` an import statement in module `name` loads."""
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        if node.level:
            package = name if _is_package(name, modules) else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module
        # `from a import b`: the submodule a.b if there is one, else a name defined in a.
        wanted = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
            for alias in node.names
        ]
    out = set()
    for target in wanted:
        parts = target.split(".")
        # Loading a.b.c runs a's and a.b's __init__ first: an edge to each package the
        # importer is not inside (inside, the package is already loading).
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in modules and not (name == prefix or name.startswith(prefix + ".")):
                out.add(prefix)
        if target in modules:
            out.add(target)
    out.discard(name)
    return out


def import_graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """Module -> the modules (of `modules` and phi3_jax) its import statements load, wherever
    they stand in the file."""
    known = MODULES | modules
    graph = {}
    for name, path in modules.items():
        nodes = ast.walk(ast.parse(path.read_text(), str(path)))
        graph[name] = set().union(
            *(_targets(n, name, known) for n in nodes if isinstance(n, ast.Import | ast.ImportFrom))
        )
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module, as a sorted list."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        # Tarjan's algorithm (the graph has ~150 nodes: recursion depth is no concern).
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def layer(name: str) -> int:
    """The layer of module `name` from LAYERS: its longest dotted prefix there (the root entry
    names the package's own __init__ only, so a module missing from LAYERS is a KeyError)."""
    if name in LAYERS:
        return LAYERS[name]
    parts = name.split(".")
    for i in range(len(parts) - 1, 1, -1):
        prefix = ".".join(parts[:i])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(f"{name}: no layer in LAYERS")


def test_every_module_has_a_layer():
    unplaced = [name for name in MODULES if not _has_layer(name)]
    assert not unplaced, f"modules with no layer in LAYERS (add them): {unplaced}"


def _has_layer(name: str) -> bool:
    try:
        layer(name)
    except KeyError:
        return False
    return True


def test_no_import_circle():
    found = circles(import_graph(MODULES))
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_upward_import():
    upward = sorted(
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in import_graph(MODULES).items()
        for target in targets
        if layer(target) > layer(name)
    )
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_leaves_import_nothing_of_phi3_jax():
    graph = import_graph(MODULES)
    leaves = {name: sorted(graph[name]) for name in MODULES if layer(name) == 0}
    assert leaves == {name: [] for name in leaves}


def test_configs_import_only_the_schema_and_leaves():
    graph = import_graph(_modules("configs"))
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        for target in targets
        if target.startswith("phi3_jax") and layer(target) > CONFIGS_MAY_IMPORT
    )
    assert not wrong, "configs/ imports more than the schema and leaf modules:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "source, expected",
    [
        # Absolute, from-package, relative and package-__init__ edges.
        ("import phi3_jax.sharding", {"phi3_jax.sharding"}),
        ("from phi3_jax import sharding", {"phi3_jax.sharding"}),
        ("from phi3_jax.model import layers", {"phi3_jax.model", "phi3_jax.model.layers"}),
        ("from phi3_jax.model import init_params", {"phi3_jax.model"}),
        ("from . import step", {"phi3_jax.train.step"}),
        ("from .optim import make_optimizer", {"phi3_jax.train.optim"}),
        ("from .. import sharding", {"phi3_jax.sharding"}),
        ("import numpy", set()),
    ],
)
def test_import_edges(source, expected):
    # As if written in phi3_jax/train/state.py (inside train/: no edge to train's __init__).
    node = ast.parse(source).body[0]
    assert _targets(node, "phi3_jax.train.state", MODULES) == expected


def test_circles_finds_a_circle_and_only_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_test_modules_have_unique_basenames():
    # pytest's prepend import mode imports a test module by its file name alone (tests/ has no
    # __init__.py): two test_x.py in different folders break the suite's collection.
    names = collections.Counter(p.name for p in (ROOT / "tests").rglob("*.py"))
    clashes = sorted(name for name, count in names.items() if count > 1 and name != "conftest.py")
    assert not clashes, f"test file names used twice under tests/: {clashes}"
