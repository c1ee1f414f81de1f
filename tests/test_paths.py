"""paths.atomic_directory: the directory appears only once complete, never overwrites."""

import os

import pytest

from phi3_jax import paths


def test_directory_appears_complete(tmp_path):
    target = tmp_path / "parent" / "out"
    with paths.atomic_directory(str(target)) as tmp:
        with open(os.path.join(tmp, "a.txt"), "w") as f:
            f.write("done")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "done"
    assert os.listdir(tmp_path / "parent") == ["out"]


def test_error_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), paths.atomic_directory(str(target)) as tmp:
        open(os.path.join(tmp, "half"), "w").close()
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_refuses_to_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match=r"out: already exists"):
        with paths.atomic_directory(str(tmp_path / "out")):
            pass
