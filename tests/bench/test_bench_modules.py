"""Every benchmark module runs under `make bench` (`python -m bench`): each has the interface
bench/__main__.py calls. The figures themselves are not checked."""

from __future__ import annotations

import inspect
import pkgutil

import bench
from bench import __main__ as bench_main


def test_every_bench_module_has_the_interface_make_bench_calls():
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name != "__main__")
    assert "prepare_throughput" in names and len(names) >= 9
    assert sorted(bench_main.MODULES) == names
    keys = []
    for name, module in bench_main.MODULES.items():
        run = getattr(module, "run", None)
        assert callable(run), f"bench.{name} has no run()"
        required = [
            p.name
            for p in inspect.signature(run).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        assert not required, f"bench.{name}.run() needs arguments {required}"
        assert isinstance(getattr(module, "SECTIONED", False), bool), name
        if not getattr(module, "SECTIONED", False):
            key = getattr(module, "RESULT_KEY", name)
            assert isinstance(key, str) and key, name
            keys.append(key)
        # Run as a program (`python -m bench.NAME`) too, without running on import.
        assert callable(getattr(module, "main", None)), f"bench.{name} has no main()"
    assert len(keys) == len(set(keys)), f"two modules store under one key: {sorted(keys)}"
