"""A run's metrics on emulated buckets (gs:// and s3://): TensorBoard event files and
metrics.jsonl written through phi3_jax.paths hold what the same writes give on local disk, a
resumed run's writer adding its own event file and continuing metrics.jsonl."""

from __future__ import annotations

import struct
import time

from tensorboardX import record_writer
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2

from phi3_jax import metrics, paths

# Two writers, as a run and its resume make them.
WRITES = ([(1, {"loss": 2.5, "lr": 1e-3}), (2, {"loss": 2.25, "lr": 1e-3})], [(3, {"loss": 2.0})])


def _masked(data: bytes) -> int:
    # TFRecord's masked CRC-32C (what tensorboardX writes and TensorBoard checks).
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(data: bytes) -> list[bytes]:
    """The records of a TFRecord file, each checked against its two CRCs."""
    records, at = [], 0
    while at < len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8 : at + 12])[0] == _masked(header)
        record = data[at + 12 : at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length : at + 16 + length])[0] == _masked(record)
        records.append(record)
        at += 16 + length
    return records


def _scalars(workdir: str) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the run's event files, file by file."""
    scalars = []
    for file in paths.glob(paths.join(workdir, metrics.TB_DIR, "events.out.tfevents.*")):
        for record in _records(paths.path(file).read_bytes()):
            event = event_pb2.Event.FromString(record)
            scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return scalars


def _write(workdir: str) -> None:
    for i, writes in enumerate(WRITES):
        # An event file is named by the second it was opened in: the resume opens its own.
        time.sleep(1.05 * (i > 0))
        writer = metrics.Writer(workdir)
        for step, scalars in writes:
            writer.write(step, scalars)
        writer.close()


def test_events_and_metrics_on_a_bucket_are_the_local_ones(bucket, tmp_path):
    local, remote = str(tmp_path / "run"), paths.join(bucket, "run")
    _write(local)
    _write(remote)
    assert len(paths.glob(paths.join(remote, metrics.TB_DIR, "*"))) == len(WRITES)
    expected = _scalars(local)
    assert [(step, tag) for step, tag, _ in expected] == [
        (step, tag) for writes in WRITES for step, scalars in writes for tag in scalars
    ]
    assert sorted(_scalars(remote)) == sorted(expected)
    assert metrics.read_metrics(remote) == metrics.read_metrics(local)


def test_a_long_event_file_on_a_bucket_goes_on_in_parts(gcs, monkeypatch):
    """Through tensorboardX's record writer (what its event thread calls), flushed per event."""
    monkeypatch.setattr(metrics, "EVENT_PART_BYTES", 150)
    run = paths.join(gcs.create_bucket(), "run")
    writer = record_writer.RecordWriter(paths.join(run, metrics.TB_DIR, "events.out.tfevents.1.h"))
    for step in range(12):
        event = event_pb2.Event(step=step)
        event.summary.value.add(tag="loss", simple_value=step / 4)
        writer.write(event.SerializeToString())
        writer.flush()
    writer.close()
    parts = paths.glob(paths.join(run, metrics.TB_DIR, "*"))
    assert len(parts) > 2 and parts[1].endswith(".0001")
    assert _scalars(run) == [(step, "loss", step / 4) for step in range(12)]
