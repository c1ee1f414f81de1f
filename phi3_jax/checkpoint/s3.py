"""orbax-checkpoint's arrays on s3:// (through tensorstore's s3 kvstore driver).

orbax-checkpoint 0.12.8 writes every array through a tensorstore kvstore spec built from its
directory by `_src/serialization/tensorstore_utils.build_kvstore_tspec`, which knows the gcs
driver (gs://) and the file driver (anything else: an s3://B/P directory is refused as a relative
path); its handlers take no spec of ours. `install()` wraps that one function: for an s3://B/P
directory it builds orbax's own spec for gs://B/P (OCDBT, its write options, read coalescing:
everything orbax decides for an object store) and turns each gcs kvstore in it into an s3 one.
The rest of orbax reaches s3:// through etils.epath (fsspec's s3fs) already.

tensorstore's s3 driver reads the AWS environment for credentials but not AWS_ENDPOINT_URL, so
the endpoint (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL) and region (AWS_REGION, else
AWS_DEFAULT_REGION) go into the spec where set. The wrapper is written against one orbax version
and checks it: another is a ValueError naming both.

On s3:// a step is written in place and marked complete by orbax's commit file last (`ATOMICITY`,
what orbax does on gs://): its default there, a temporary directory renamed once complete, is a
copy of every object on S3, not atomic.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

ORBAX_VERSION = "0.12.8"
# The drivers orbax picks for gs:// (gcs_utils.get_kvstore_for_gcs, by TENSORSTORE_GCS_BACKEND).
_GCS_DRIVERS = ("gcs", "gcs_grpc")
# Steps on s3:// complete when their commit_success.txt is written; readers ignore those without.
ATOMICITY = ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.COMMIT_FILE)


def s3_kvstore(bucket: str, path: str) -> dict[str, Any]:
    """tensorstore's s3 kvstore spec of s3://BUCKET/PATH, with the AWS environment's endpoint
    and region where set (tensorstore reads the credentials itself)."""
    spec: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": path}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint:
        spec["endpoint"] = endpoint
    if region:
        spec["aws_region"] = region
    return spec


def _to_s3(spec: Any) -> Any:
    """`spec` with every gcs kvstore in it (at any depth: ocdbt's base, kvstack's layers) an s3
    kvstore of the same bucket and path."""
    if isinstance(spec, dict):
        if spec.get("driver") in _GCS_DRIVERS:
            rest = {k: v for k, v in spec.items() if k not in ("driver", "bucket", "path")}
            return s3_kvstore(spec["bucket"], spec["path"]) | rest
        return {key: _to_s3(value) for key, value in spec.items()}
    if isinstance(spec, list):
        return [_to_s3(value) for value in spec]
    return spec


def _wrap(build):
    @functools.wraps(build)
    def build_kvstore_tspec(directory, *args, **kwargs):
        if not str(directory).startswith("s3://"):
            return build(directory, *args, **kwargs)
        return _to_s3(build("gs://" + str(directory).removeprefix("s3://"), *args, **kwargs))

    build_kvstore_tspec.phi3_s3 = True
    return build_kvstore_tspec


def install() -> None:
    """Let orbax write and read arrays on s3:// (once per process; idempotent). ValueError if
    orbax-checkpoint is not the version this was written for."""
    if ocp.__version__ != ORBAX_VERSION:
        raise ValueError(
            f"phi3_jax.checkpoint.s3 adapts orbax-checkpoint {ORBAX_VERSION}, "
            f"this is {ocp.__version__}; check its build_kvstore_tspec and update the adapter"
        )
    if not getattr(ts_utils.build_kvstore_tspec, "phi3_s3", False):
        ts_utils.build_kvstore_tspec = _wrap(ts_utils.build_kvstore_tspec)
