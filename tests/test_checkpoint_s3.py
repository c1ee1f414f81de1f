"""checkpoint.s3: orbax's tensorstore specs of an s3:// directory use the s3 kvstore driver, with
the AWS environment's endpoint and region, and leave every other directory's spec as orbax built
it. The specs are checked by tensorstore itself (`ts.KvStore.Spec`); writing through them on an
emulated bucket is tests/cloud/test_checkpoint_on_bucket.py's."""

from __future__ import annotations

import json

import tensorstore as ts
from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

from phi3_jax.checkpoint import s3


def _kvstores(spec) -> list[dict]:
    """Every kvstore (a dict naming a driver other than ocdbt/kvstack) in `spec`."""
    if isinstance(spec, list):
        return [kv for value in spec for kv in _kvstores(value)]
    if not isinstance(spec, dict):
        return []
    found = [spec] if spec.get("driver") not in (None, "ocdbt", "kvstack") else []
    return found + [kv for value in spec.values() for kv in _kvstores(value)]


def test_s3_directories_get_s3_kvstores_with_the_environment_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    s3.install()
    s3.install()  # once only: a second install wraps nothing again
    assert ts_utils.build_kvstore_tspec.__wrapped__.__name__ == "build_kvstore_tspec"
    assert not hasattr(ts_utils.build_kvstore_tspec.__wrapped__, "phi3_s3")

    for use_ocdbt in (True, False):
        spec = ts_utils.build_kvstore_tspec(
            "s3://bucket/run/checkpoints/3/state", "w", use_ocdbt=use_ocdbt
        )
        kvstores = _kvstores(spec)
        assert kvstores, spec
        for kv in kvstores:
            assert kv["driver"] == "s3", spec
            assert kv["bucket"] == "bucket"
            assert kv["path"].startswith("run/checkpoints/3/state")
            assert kv["endpoint"] == "http://127.0.0.1:9"
            assert kv["aws_region"] == "eu-west-3"
        ts.KvStore.Spec(spec)  # tensorstore accepts it (raises otherwise)
    # OCDBT's base is the step's item directory, arrays by name inside it.
    ocdbt = ts_utils.build_kvstore_tspec("s3://bucket/run/3/state", "w")
    assert ocdbt["driver"] == "ocdbt" and ocdbt["path"] == "w"


def test_other_directories_keep_orbax_s_spec():
    s3.install()
    original = ts_utils.build_kvstore_tspec.__wrapped__
    for directory in ("/tmp/run/checkpoints/1/state", "gs://bucket/run/checkpoints/1/state"):
        got = ts_utils.build_kvstore_tspec(directory, "w")
        assert json.dumps(got, sort_keys=True) == json.dumps(
            original(directory, "w"), sort_keys=True
        )
        assert "s3" not in {kv["driver"] for kv in _kvstores(got)}
