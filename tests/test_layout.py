"""Tests mirror the package: every module of phi3_jax/ has its test file where a newcomer looks.

Module `phi3_jax/m.py` is tested in `tests/test_m.py`; `phi3_jax/a/b/m.py` in `test_m.py` under
`tests/a/` or `tests/a/b/`, or in `test_b_m.py` (where the short name is taken: test file names
are unique across tests/) there or in `tests/`; a package's `__init__.py` in `test_<package>.py`,
its `__main__.py` in `test_<package>_cli.py`, in `tests/` or the package's own folder.
A module whose tests stand in a file named after a wider concern is listed in TESTED_IN with that
file, which must exist and import it (or name it, for a CLI run as `python -m`); a tiny module
with nothing to test alone is listed in NOTHING_TO_TEST.
"""

from __future__ import annotations

import pathlib

from test_imports import MODULES, ROOT, import_graph

TESTS = ROOT / "tests"

# Modules that hold nothing but re-exports or a docstring, or one exception class.
NOTHING_TO_TEST = {
    "phi3_jax": "a docstring",
    "phi3_jax.errors": "one exception class (BadInputError), raised and matched everywhere",
    "phi3_jax.data": "a docstring",
    "phi3_jax.eval": "a docstring",
    "phi3_jax.longrope": "a docstring",
    "phi3_jax.posttrain": "a docstring",
    "phi3_jax.serve": "a docstring",
    "phi3_jax.model": "re-exports of model.functional and Phi3",
    "phi3_jax.train": "re-exports of train.optim, state and step",
}

# Module -> the test file that tests it, named after a wider concern.
TESTED_IN = {
    # The config schema is tested whole, through config.validate and the recipes.
    "phi3_jax.config.checks": "tests/test_config.py",
    "phi3_jax.config.data": "tests/test_config.py",
    "phi3_jax.config.loop": "tests/test_config.py",
    "phi3_jax.config.model": "tests/test_config.py",
    "phi3_jax.config.parallel": "tests/test_config.py",
    "phi3_jax.config.posttrain": "tests/test_config.py",
    "phi3_jax.config.schema": "tests/test_config.py",
    "phi3_jax.config.train": "tests/test_config.py",
    # The splash kernel, tested with the other kernels against the plain einsum path.
    "phi3_jax.model.splash": "tests/model/test_attention.py",
    # Phi-3-small's HF layout, tested beside its model.
    "phi3_jax.model.hf_small": "tests/model/test_small.py",
    # A tokenizer kind, tested behind data.tokenizer's interface.
    "phi3_jax.data.sentencepiece_tokenizer": "tests/data/test_tokenizer.py",
    # The offline prepare pipeline: its CLI and manifest.
    "phi3_jax.data.prepare.__main__": "tests/data/test_prepare.py",
    "phi3_jax.data.prepare.manifest": "tests/data/test_prepare.py",
    # tests/eval/ keeps its names this session (another engineer's area): the reference checks
    # against lm-eval, the CLI, the run that loads a checkpoint.
    "phi3_jax.eval.__main__": "tests/eval/test_cli.py",
    "phi3_jax.eval.data": "tests/eval/test_reference.py",
    "phi3_jax.eval.metrics": "tests/eval/test_reference.py",
    "phi3_jax.eval.tasks": "tests/eval/test_reference.py",
    "phi3_jax.eval.runner": "tests/eval/test_reference.py",
    "phi3_jax.eval.scorer": "tests/eval/test_reference.py",
    "phi3_jax.eval.source": "tests/eval/test_in_loop.py",
    # tests/longrope/ keeps its names likewise: the search and its fitness.
    "phi3_jax.longrope.evolution": "tests/longrope/test_search.py",
    "phi3_jax.longrope.factors": "tests/longrope/test_fitness.py",
    # The server through real clients: its engine and routes together.
    "phi3_jax.serve.api": "tests/serve/test_server.py",
    "phi3_jax.serve.engine": "tests/serve/test_server.py",
}


def own_test_files(module: str) -> list[pathlib.Path]:
    """Where `module`'s own test file may be (see the module docstring)."""
    parts = module.split(".")[1:] or ["phi3_jax"]
    if MODULES[module].name == "__init__.py":
        names = [parts[-1]]
    elif parts[-1] == "__main__":
        parts = parts[:-1]
        names = [f"{parts[-1]}_cli"]
    else:
        names = [parts[-1]]
    # A module's folders are its packages'; a package's (or its CLI's) include its own.
    own_folder = MODULES[module].name in ("__init__.py", "__main__.py")
    folders = [TESTS.joinpath(*parts[:i]) for i in range(len(parts) + own_folder)]
    short = [folder / f"test_{names[0]}.py" for folder in folders]
    if len(parts) == 1 or own_folder:
        return short
    # A package's module by its short name only inside the package's folder (tests/test_x.py
    # is top-level x's), by its qualified name anywhere.
    qualified = [folder / f"test_{parts[-2]}_{parts[-1]}.py" for folder in folders]
    return short[1:] + qualified


PACKAGE_IMPORTS = import_graph(MODULES)


def _imports(imported: set[str], module: str) -> bool:
    """Whether a test file importing `imported` imports `module`, itself or through its
    package's re-exports (`from phi3_jax import config` holds config.schema's names)."""
    package = module.rpartition(".")[0]
    return module in imported or (package in imported and module in PACKAGE_IMPORTS[package])


def _runs(path: pathlib.Path, module: str) -> bool:
    """Whether the test file runs `module` as `python -m` (its name quoted, as an argument)."""
    name = module.removesuffix(".__main__")
    return f'"{name}"' in path.read_text()


def test_every_module_has_its_test_file():
    missing = [
        f"{module} ({', '.join(str(p.relative_to(ROOT)) for p in own_test_files(module)[:2])})"
        for module in MODULES
        if module not in NOTHING_TO_TEST
        and module not in TESTED_IN
        and not any(p.is_file() for p in own_test_files(module))
    ]
    assert not missing, "modules without a test file:\n" + "\n".join(missing)


def test_listed_modules_exist_and_their_test_files_test_them():
    listed = sorted(set(NOTHING_TO_TEST) | set(TESTED_IN))
    assert [m for m in listed if m not in MODULES] == []
    # A module with a test file of its own is not listed as tested elsewhere.
    own = [m for m in TESTED_IN if any(p.is_file() for p in own_test_files(m))]
    assert own == [], f"listed in TESTED_IN but have their own test file: {own}"
    files = {name: ROOT / path for name, path in TESTED_IN.items()}
    graph = import_graph({f"tests.{p.stem}": p for p in files.values()})
    wrong = sorted(
        f"{name}: {path.relative_to(ROOT)}"
        for name, path in files.items()
        if not _imports(graph[f"tests.{path.stem}"], name) and not _runs(path, name)
    )
    assert wrong == [], "test files that do not import (or run) the module listed:\n" + "\n".join(
        wrong
    )


def test_own_test_files_of_a_module_a_package_and_a_cli():
    assert own_test_files("phi3_jax.aot") == [TESTS / "test_aot.py"]
    assert own_test_files("phi3_jax.data.sources") == [
        TESTS / "data" / "test_sources.py",
        TESTS / "test_data_sources.py",
        TESTS / "data" / "test_data_sources.py",
    ]
    # tests/test_metrics.py is phi3_jax.metrics', not phi3_jax.eval.metrics'.
    assert TESTS / "test_metrics.py" not in own_test_files("phi3_jax.eval.metrics")
    assert own_test_files("phi3_jax.checkpoint")[0] == TESTS / "test_checkpoint.py"
    assert TESTS / "train" / "test_train_cli.py" in own_test_files("phi3_jax.train.__main__")
