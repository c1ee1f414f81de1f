"""Fixtures of the bucket tests: the two emulators, started once per session on free loopback
ports (tests/cloud/emulators.py), and a fresh bucket on either."""

from __future__ import annotations

import pytest

from tests.cloud import emulators


@pytest.fixture(scope="session")
def gcs():
    """fake-gcs-server, its clients' endpoint settings in os.environ."""
    with emulators.running(emulators.FakeGCS()) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server, its clients' endpoint settings in os.environ."""
    with emulators.running(emulators.MotoS3()) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def _bucket_cache(tmp_path, monkeypatch):
    """Mirrors of bucket files (tokenizers, quality models) and local state kept for a bucket's
    path (paths.cache_path) go under the test's tmp_path, not ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _new_bucket(request) -> str:
    emulator = request.getfixturevalue({"gs": "gcs", "s3": "s3"}[request.param])
    return emulator.create_bucket()


@pytest.fixture(params=["gs", "s3"])
def bucket(request) -> str:
    """A new bucket on the emulator of each scheme: gs://NAME, then s3://NAME."""
    return _new_bucket(request)


@pytest.fixture(params=["gs", pytest.param("s3", marks=pytest.mark.slow)])
def tool_bucket(request) -> str:
    """A new bucket for the heavier tool tests (prepare, make data, make data-llm): gs:// in the
    default suite, s3:// under -m slow, so the emulator tests stay under a minute together (s3fs
    is in the default suite through the path layer's, the shards' and the metrics' tests)."""
    return _new_bucket(request)
