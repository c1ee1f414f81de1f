"""The bundled raw corpus: a module's documentation as pages (its docstring, each public class
with its methods, its public functions together), the standard library's files without tests
and vendored code, and records with ids, text and license."""

from __future__ import annotations

import pathlib

from phi3_jax.data import corpus

SOURCE = '''"""Module doc."""


class Public:
    """Class doc."""

    def method(self):
        """Method doc."""

    def _private(self):
        """Not shown."""


class _Hidden:
    """Not shown."""


def first():
    """First doc."""


def second():
    """Second doc."""


def undocumented():
    pass
'''


def test_module_pages():
    assert list(corpus.module_pages(SOURCE)) == [
        "Module doc.",
        "Public\n\nClass doc.\n\nmethod\n\nMethod doc.",
        "first\n\nFirst doc.\n\nsecond\n\nSecond doc.",
    ]
    assert list(corpus.module_pages("x = 1\n")) == []


def test_documents_of_a_library_tree(tmp_path: pathlib.Path):
    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text(SOURCE)
    (tmp_path / "pkg" / "tests" / "test_mod.py").write_text(SOURCE)
    (tmp_path / "broken.py").write_text("def (:\n")
    assert [p.name for p in corpus.stdlib_modules(tmp_path)] == ["broken.py", "mod.py"]
    docs = list(corpus.documents(tmp_path))
    ids = [d["id"] for d in docs]
    # The broken file (not Python) gives nothing; the pydoc topics follow the modules.
    assert ids[:3] == ["stdlib/pkg/mod.py/0", "stdlib/pkg/mod.py/1", "stdlib/pkg/mod.py/2"]
    assert len(ids) > 3 and all(i.startswith("pydoc-topics/") for i in ids[3:])
    assert docs[0]["text"] == "Module doc."
    assert {d["metadata"]["license"] for d in docs} == {"PSF-2.0"}
