"""`python -m bench` (`make bench`): run every benchmark module of this package, in name order,
then print one markdown table of the figures and write them to bench/results.json. The first rows
are the software stack that measured them (`stack.python`, `stack.jax`, `stack.jaxlib`): figures
are comparable only between runs of the same stack.

Each module exposes `run()`, which measures, prints its figures and returns them (None: skipped,
e.g. the GPU benchmark without a GPU). They are stored under the module's `RESULT_KEY` (default:
its name); a module with `SECTIONED = True` returns several top-level sections at once.
`--bench_only=cpu_train,attention` runs a subset (module names) and updates only their sections
of results.json. A module with `OPT_IN = True` (MaxText beside us: it installs a virtualenv and
compiles for an hour) runs only when named there (`make bench-peers`).
"""

import importlib
import json
import os
import pathlib
import pkgutil
import platform

import jax
import jaxlib
from absl import app, flags

import bench

# Imported before flags are parsed, so every module's absl flags exist.
MODULES = {
    info.name: importlib.import_module(f"bench.{info.name}")
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name)
    if not info.name.startswith("_")
}
RESULTS = pathlib.Path(__file__).with_name("results.json")

_ONLY = flags.DEFINE_list("bench_only", [], "module names to run (default: all)")


def flatten(figures, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) rows of nested figures; lists are shown whole."""
    if not isinstance(figures, dict):
        return [(prefix, figures)]
    rows = []
    for key, value in figures.items():
        rows += flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return rows


def markdown_table(results: dict) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:,.4g}"
        if isinstance(value, list):
            return ", ".join(cell(v) for v in value)
        return str(value)

    lines = ["| figure | value |", "|---|---:|"]
    lines += [f"| `{key}` | {cell(value)} |" for key, value in flatten(results)]
    return "\n".join(lines)


def stack() -> dict[str, str]:
    """Versions of the interpreter and of JAX that the figures were measured on."""
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
    }


def selected(only: list[str]) -> list[str]:
    """The modules a run executes: those named, else every one that is not opt-in."""
    if only:
        return [name for name in MODULES if name in only]
    return [name for name, module in MODULES.items() if not getattr(module, "OPT_IN", False)]


def main(argv: list[str]) -> None:
    del argv
    unknown = set(_ONLY.value) - set(MODULES)
    if unknown:
        raise app.UsageError(f"--bench_only: no such benchmark {sorted(unknown)}")
    # A subset run keeps the other modules' figures of the last run.
    kept = json.loads(RESULTS.read_text()) if _ONLY.value and RESULTS.exists() else {}
    results = kept | {"stack": stack(), "load_average_at_start": os.getloadavg()[0]}
    for name in selected(_ONLY.value):
        module = MODULES[name]
        figures = module.run()
        if figures is None:
            continue
        if getattr(module, "SECTIONED", False):
            results.update(figures)
        else:
            results[getattr(module, "RESULT_KEY", name)] = figures
    results["load_average_at_end"] = os.getloadavg()[0]
    print(markdown_table(results))
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS}")


# grain's worker processes are spawned: they re-import this file, and must not rerun it.
if __name__ == "__main__":
    app.run(main)
