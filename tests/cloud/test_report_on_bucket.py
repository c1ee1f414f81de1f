"""launch.report on a sweep root in an emulated bucket gives the report of the same runs on local
disk, and writes its files into the bucket; a run the sweep launched there (its run.json) and
that has not trained yet is listed as unfinished."""

from __future__ import annotations

import pathlib

from launch import report, sweep
from phi3_jax import paths
from tests.experiments.test_report import _results, _write_run


def _sweep(root: pathlib.Path) -> None:
    for arm, (bpb, acc) in (("raw", (2.0, 0.25)), ("filtered", (1.5, 0.75))):
        _write_run(
            root,
            f"{arm}-seed=0",
            steps=10,
            losses={0: 10.0, 5: 7.0, 10: 5.0 + (arm == "raw")},
            evals={"eval_clean.json": _results(bpb, acc)},
            record={"arm": arm, "evaluations": ["eval_clean.json"]},
        )


def test_report_of_a_sweep_on_a_bucket_is_the_local_one(gcs, tmp_path):
    local = tmp_path / "sweep"
    _sweep(local)
    remote = paths.join(gcs.create_bucket(), "sweep")
    with paths.atomic_directory(remote) as tmp:  # the same runs, uploaded
        _sweep(pathlib.Path(tmp))
    expected, got = report.build(str(local)), report.build(remote)
    assert got["arms"] == expected["arms"]
    assert [r["status"] for r in got["runs"]] == ["finished", "finished"]
    assert got["root"] == remote
    assert paths.path(paths.join(remote, report.REPORT_PNG)).read_bytes().startswith(b"\x89PNG")
    assert paths.path(paths.join(remote, report.REPORT_MD)).read_text() == (
        (local / report.REPORT_MD).read_text()
    )


def test_a_launched_run_on_a_bucket_is_listed_before_it_trains(gcs):
    root = paths.join(gcs.create_bucket(), "sweep")
    sweep.write_run_record(paths.join(root, "raw-seed=0"), {"name": "raw-seed=0", "arm": "raw"})
    runs = report.build(root)["runs"]
    assert [(r["name"], r["status"]) for r in runs] == [
        ("raw-seed=0", "unfinished: no metrics.jsonl")
    ]
