"""phi3_jax.paths on emulated buckets (gs:// on fake-gcs-server, s3:// on moto), through the
clients that the code uses: etils.epath over gcsfs/s3fs, and orbax's tensorstore for gs://."""

from __future__ import annotations

import os

import numpy as np
import pytest

from phi3_jax import paths
from phi3_jax.data import tokenizer
from phi3_jax.train import loop
from tests.cloud import emulators

# The repository's bundled tokenizers.
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "data")


def test_read_write_list_glob(bucket):
    run = paths.join(bucket, "run")
    paths.path(paths.join(run, "a", "x.txt")).write_text("x")
    paths.path(paths.join(run, "b.txt")).write_text("b")
    assert paths.path(paths.join(run, "a", "x.txt")).read_text() == "x"
    assert paths.glob(paths.join(run, "*.txt")) == [paths.join(run, "b.txt")]
    assert paths.glob(paths.join(run, "**", "*.txt")) == [
        paths.join(run, "a", "x.txt"),
        paths.join(run, "b.txt"),
    ]
    assert sorted(p.name for p in paths.path(run).iterdir()) == ["a", "b.txt"]
    assert paths.path(paths.join(run, "a")).is_dir()


def test_check_writable(bucket):
    paths.check_writable(paths.join(bucket, "run"))
    assert list(paths.path(bucket).iterdir()) == []  # the probe is gone
    scheme = bucket.split("://")[0]
    with pytest.raises(OSError, match=rf"^{scheme}://no-such-bucket/run: not a writable directory"):
        paths.check_writable(f"{scheme}://no-such-bucket/run")


def test_a_workdir_in_a_missing_bucket_is_one_line_without_secrets(gcs):
    with pytest.raises(loop.WorkdirError) as error:
        loop.prepare_workdir("gs://no-such-bucket/run")
    message = str(error.value)
    assert message.startswith("--workdir=gs://no-such-bucket/run: not a writable directory (")
    assert "\n" not in message and emulators.SECRET not in message


def test_atomic_directory_uploads_on_success_only(bucket):
    target = paths.join(bucket, "out")
    with pytest.raises(RuntimeError, match="boom"), paths.atomic_directory(target) as tmp:
        open(os.path.join(tmp, "half"), "w").close()
        raise RuntimeError("boom")
    assert not paths.path(target).exists()
    with paths.atomic_directory(target) as tmp:
        os.makedirs(os.path.join(tmp, "params"))
        for name in ("params/a", "config.json"):
            with open(os.path.join(tmp, name), "w") as f:
                f.write(name)
        assert not paths.path(target).exists()
    assert paths.path(paths.join(target, "config.json")).read_text() == "config.json"
    assert paths.path(paths.join(target, "params", "a")).read_text() == "params/a"
    with pytest.raises(FileExistsError, match="out: already exists"):
        with paths.atomic_directory(target):
            pass


def test_orbax_arrays_reach_gcs_through_tensorstore(gcs):
    """orbax writes its arrays with tensorstore's gcs driver (TENSORSTORE_GCS_HTTP_URL) and its
    metadata through epath (gcsfs): a save lands in the bucket and restores equal."""
    import orbax.checkpoint as ocp

    where = paths.join(gcs.create_bucket(), "ckpt")
    tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.int32)}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(where, tree)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(where)
    assert paths.glob(paths.join(where, "**", "manifest.ocdbt"))
    for key in tree:
        np.testing.assert_array_equal(restored[key], tree[key])


@pytest.mark.parametrize(
    "kind,files",
    [
        pytest.param(  # ~20 s: the 32k-piece tokenizer and its tokenizer.json, twice
            "sentencepiece", ("tokenizer.model", "tokenizer.json"), marks=pytest.mark.slow
        ),
        ("tiktoken", ("tokenizer_small.tiktoken",)),
    ],
)
def test_tokenizer_on_a_bucket_is_the_local_one(gcs, kind, files):
    """The tokenizer libraries read local files: a bucket's are mirrored, the same bytes, so the
    same fingerprint (what a resume checks)."""
    remote = paths.join(gcs.create_bucket(), "tok")
    for name in files:
        with open(os.path.join(DATA_DIR, name), "rb") as f:
            paths.path(paths.join(remote, name)).write_bytes(f.read())
    local = tokenizer.load(kind, os.path.join(DATA_DIR, files[0]))
    mirrored = tokenizer.load(kind, paths.join(remote, files[0]))
    assert mirrored.fingerprint == local.fingerprint
    text = "The list type supports indexing."
    assert mirrored.encode(text) == local.encode(text)


def test_local_file_is_uploaded_on_success_only(bucket):
    target = paths.join(bucket, "model", "edu.bin")
    with pytest.raises(RuntimeError, match="boom"), paths.local_file(target) as local:
        with open(local, "wb") as f:
            f.write(b"half")
        raise RuntimeError("boom")
    assert not paths.path(target).exists()
    with paths.local_file(target) as local:
        assert not paths.is_remote(local)
        with open(local, "wb") as f:
            f.write(b"model")
    assert paths.path(target).read_bytes() == b"model"


def test_common_folder_of_a_buckets_files_and_of_two_stores(bucket, tmp_path):
    files = [paths.join(bucket, "in", "a", "x.jsonl"), paths.join(bucket, "in", "y.jsonl")]
    assert paths.common_folder(files) == (paths.join(bucket, "in"), ["a/x.jsonl", "y.jsonl"])
    assert paths.common_folder([str(tmp_path / "x.jsonl")]) == (str(tmp_path), ["x.jsonl"])
    scheme = bucket.split("://")[0]
    for other in (str(tmp_path / "x.jsonl"), f"{scheme}://another-bucket/x.jsonl"):
        with pytest.raises(ValueError, match=rf"^{files[0]} and {other}: on different stores"):
            paths.common_folder([files[0], other])
