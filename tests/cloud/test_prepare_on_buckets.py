"""The prepare job (datatrove over fsspec) with --input and --output on emulated buckets (gs:// on
fake-gcs-server, s3:// on moto), its work directory and its classifier there too: it keeps the
documents, and counts what it drops, as the same job on local disk does."""

from __future__ import annotations

import pytest

from phi3_jax import paths
from phi3_jax.data import prepare
from phi3_jax.data.readers import iter_documents
from phi3_jax.data.shards import write_jsonl_zst
from tests.data.test_prepare import BAD, GOOD, QUALITY_MODEL, TOKENIZER

RECORDS = [{"id": f"hand/{i}", "text": t} for i, t in enumerate(GOOD + list(BAD.values()))]


def _documents(output: str, phase: str) -> list[tuple[str, str, dict]]:
    """(id, text, metadata but the source file's path) of a phase's shards, in order."""
    return [
        (d.id, d.text, {k: v for k, v in d.metadata.items() if k != "file_path"})
        for d in iter_documents(paths.join(output, phase, "*.jsonl.zst"))
    ]


def _prepare(root: str, quality_model: str) -> tuple[str, dict]:
    write_jsonl_zst(RECORDS, paths.join(root, "in", "hand.jsonl.zst"))
    output = paths.join(root, "out")
    result = prepare.run(paths.join(root, "in", "*.jsonl.zst"), output, quality_model, phase=2)
    return output, result


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> tuple[str, dict]:
    return _prepare(str(tmp_path_factory.mktemp("prepare")), QUALITY_MODEL)


def test_prepare_on_a_bucket_keeps_the_local_documents(tool_bucket, local):
    expected_output, expected = local
    model = paths.join(tool_bucket, "quality", "edu.bin")
    with open(QUALITY_MODEL, "rb") as f:
        paths.path(model).write_bytes(f.read())
    output, result = _prepare(tool_bucket, model)
    assert paths.glob(paths.join(output, "work", "logs", "phase2", "completions", "*"))
    for phase in ("phase1", "phase2"):
        assert _documents(output, phase) == _documents(expected_output, phase)
    assert result["kept"] == expected["kept"] == {"phase1": len(GOOD), "phase2": len(GOOD)}
    assert result["steps"] == expected["steps"]
    assert (
        result["settings"]["quality_model"]["sha256"]
        == (expected["settings"]["quality_model"]["sha256"])
    )
    assert [e["path"] for e in result["inputs"]] == [
        paths.join(tool_bucket, "in", "hand.jsonl.zst")
    ]
    assert [e["path"] for e in result["outputs"]["phase1"]] == [
        paths.join(output, "phase1", "00000.jsonl.zst")
    ]
    assert paths.path(paths.join(output, "manifest.json")).is_file()


def test_token_shards_to_a_bucket_inputs_on_two_stores_and_a_missing_bucket_are_refused(
    gcs, tmp_path
):
    bucket = gcs.create_bucket()
    write_jsonl_zst(RECORDS, str(tmp_path / "hand.jsonl.zst"))
    with pytest.raises(ValueError, match=r"^--tokenizer with --output=gs://.*: ArrayRecord"):
        prepare.run(str(tmp_path / "*.zst"), bucket, QUALITY_MODEL, tokenizer=TOKENIZER)
    write_jsonl_zst(RECORDS, paths.join(bucket, "hand.jsonl.zst"))
    with pytest.raises(ValueError, match=r" and gs://.*: on different stores"):
        prepare.run(f"{tmp_path}/*.zst,{bucket}/*.zst", str(tmp_path / "out"), QUALITY_MODEL)
    with pytest.raises(OSError, match=r"^gs://no-such-bucket/out: not a writable directory"):
        prepare.run(f"{bucket}/*.zst", "gs://no-such-bucket/out", QUALITY_MODEL)
