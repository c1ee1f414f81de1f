"""The raw bundled corpus: English prose from Python's own standard library (PSF licence).

Python is distributed under the PSF License Agreement, which allows redistribution of its source,
docstrings included. Documents: each stdlib module's docstrings cut into pages like those of the
library reference, and each topic of `pydoc_data.topics` (the language reference sections that
`help()` shows). This stands in for web text; `prepare` filters it like any web shard.

    python -m phi3_jax.data.corpus --out=FILE.jsonl.zst
"""

from __future__ import annotations

import argparse
import ast
import inspect
import pathlib
import sysconfig
from collections.abc import Iterator, Sequence

from phi3_jax.data.shards import write_jsonl_zst

LICENSE = "PSF-2.0"
# Tests, demos and vendored third-party code are left out.
_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of a class or function and of everything public defined inside it."""
    for sub in ast.walk(node):
        if (
            isinstance(sub, _DEFS)
            and not sub.name.startswith("_")
            and (doc := ast.get_docstring(sub))
        ):
            yield f"{sub.name}\n\n{doc}"


def module_pages(source: str) -> Iterator[str]:
    """A module's documentation as pages: its docstring, each public top-level class with its
    methods, and its public top-level functions together."""
    tree = ast.parse(source)
    if doc := ast.get_docstring(tree):
        yield doc
    functions = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            if page := "\n\n".join(_docstrings(node)):
                yield page
        elif isinstance(node, _DEFS):
            functions.extend(_docstrings(node))
    if functions:
        yield "\n\n".join(functions)


def stdlib_modules(root: pathlib.Path) -> Iterator[pathlib.Path]:
    """The standard library's .py files under `root`, sorted, without tests and vendored code."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if not _SKIP_PARTS.intersection(rel):
            yield path


def documents(root: pathlib.Path | None = None) -> Iterator[dict]:
    """Corpus records {"id", "text", "metadata"}: stdlib modules, then pydoc topics."""
    from pydoc_data import topics

    root = root or pathlib.Path(sysconfig.get_paths()["stdlib"])
    meta = {"source": "python-stdlib", "license": LICENSE}
    for path in stdlib_modules(root):
        try:
            pages = list(module_pages(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError):
            continue  # a few stdlib files are templates or in other encodings: not prose
        for i, text in enumerate(pages):
            yield {"id": f"stdlib/{path.relative_to(root)}/{i}", "text": text, "metadata": meta}
    for name, text in sorted(topics.topics.items()):
        yield {"id": f"pydoc-topics/{name}", "text": inspect.cleandoc(text), "metadata": meta}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3_jax.data.corpus")
    parser.add_argument("--out", required=True, help="output .jsonl.zst file")
    args = parser.parse_args(argv)
    print(f"wrote {write_jsonl_zst(documents(), args.out)} documents to {args.out}")


if __name__ == "__main__":
    main()
