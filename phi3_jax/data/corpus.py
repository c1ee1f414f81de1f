"""The raw bundled corpus: English prose from Python's own standard library (PSF licence).

Python is distributed under the PSF License Agreement, which allows redistribution of its source,
docstrings included. One document per source: each stdlib module's docstrings (module, classes,
functions, in source order) joined into one text, and each topic of `pydoc_data.topics` (the
language reference sections that `help()` shows). This stands in for web text; `prepare` filters it
like any web shard.

    python -m phi3_jax.data.corpus --out=FILE.jsonl.zst
"""

from __future__ import annotations

import argparse
import ast
import inspect
import pathlib
import sysconfig
from collections.abc import Iterator, Sequence

import orjson
import zstandard

LICENSE = "PSF-2.0"
# Tests, demos and vendored third-party code are left out.
_SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}


def module_text(source: str) -> str:
    """Docstrings of a module's source, in order, with a heading naming each class or function."""
    tree = ast.parse(source)
    parts = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        if isinstance(node, ast.Module):
            parts.append(doc)
        elif not node.name.startswith("_"):
            parts.append(f"{node.name}\n\n{doc}")
    return "\n\n".join(parts)


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
            text = module_text(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue  # a few stdlib files are templates or in other encodings: not prose
        if text:
            yield {"id": f"stdlib/{path.relative_to(root)}", "text": text, "metadata": meta}
    for name, text in sorted(topics.topics.items()):
        yield {"id": f"pydoc-topics/{name}", "text": inspect.cleandoc(text), "metadata": meta}


def write_jsonl_zst(records: Iterator[dict], path: str) -> int:
    """Write records as one zstd-compressed JSON line each; return how many."""
    lines = [orjson.dumps(record) + b"\n" for record in records]
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_bytes(zstandard.ZstdCompressor(level=19).compress(b"".join(lines)))
    return len(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3_jax.data.corpus")
    parser.add_argument("--out", required=True, help="output .jsonl.zst file")
    args = parser.parse_args(argv)
    print(f"wrote {write_jsonl_zst(documents(), args.out)} documents to {args.out}")


if __name__ == "__main__":
    main()
