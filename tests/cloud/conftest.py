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


@pytest.fixture(params=["gs", "s3"])
def bucket(request) -> str:
    """A new bucket on the emulator of each scheme: gs://NAME, then s3://NAME."""
    emulator = request.getfixturevalue({"gs": "gcs", "s3": "s3"}[request.param])
    return emulator.create_bucket()
