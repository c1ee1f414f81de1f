"""`python -m bench` (`make bench`): run every benchmark module of this package, in name order.

Each module exposes `run()`, which measures, prints its figures and ratio, and returns them.
"""

import importlib
import pkgutil

from absl import app

import bench

# Imported before flags are parsed, so every module's absl flags exist.
MODULES = [
    importlib.import_module(f"bench.{info.name}")
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name)
    if not info.name.startswith("_")
]


def main(argv: list[str]) -> None:
    del argv
    for module in MODULES:
        module.run()


# grain's worker processes are spawned: they re-import this file, and must not rerun it.
if __name__ == "__main__":
    app.run(main)
