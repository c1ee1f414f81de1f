"""The bench table names the software stack that measured its figures (first rows)."""

import platform

import jax
import jaxlib

from bench import __main__ as bench_main


def test_table_starts_with_the_stack():
    results = {"stack": bench_main.stack(), "cpu_train": {"ratio": 0.5}}
    rows = bench_main.markdown_table(results).splitlines()[2:]
    assert rows == [
        f"| `stack.python` | {platform.python_version()} |",
        f"| `stack.jax` | {jax.__version__} |",
        f"| `stack.jaxlib` | {jaxlib.__version__} |",
        "| `cpu_train.ratio` | 0.5 |",
    ]


def test_maxtext_runs_only_when_named():
    assert "maxtext_peer" not in bench_main.selected([])
    assert "cpu_train" in bench_main.selected([])
    assert bench_main.selected(["maxtext_peer"]) == ["maxtext_peer"]
