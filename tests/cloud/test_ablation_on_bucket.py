"""launch.ablation with its root on an emulated gs:// bucket: the arms' data written there are the
bytes written locally, and a dry run plans the runs, evaluations and report on the bucket."""

from __future__ import annotations

from configs.ablations import data_quality
from launch import ablation
from phi3_jax import paths

ABLATION = "configs/ablations/data_quality.py"


def test_ablation_data_on_a_bucket_are_the_local_bytes(gcs, tmp_path):
    data_dir = paths.join(gcs.create_bucket(), "data_quality", "data")
    assert ablation.prepare_data(data_quality, data_dir) == (
        ablation.prepare_data(data_quality, str(tmp_path))
    )
    names = [ablation.CLEAN_FILE] + [f"{arm}.jsonl.zst" for arm in data_quality.ARMS]
    assert sorted(paths.path(p).name for p in paths.glob(paths.join(data_dir, "*"))) == sorted(
        names
    )
    for name in names:
        expected = (tmp_path / name).read_bytes()
        assert paths.path(paths.join(data_dir, name)).read_bytes() == expected, name


def test_a_dry_run_plans_everything_on_the_bucket(gcs, capsys):
    bucket = gcs.create_bucket()
    root = paths.join(bucket, "abl")
    code = ablation.main([ABLATION, "--launcher=slurm", f"--workdir_root={root}", "--dry_run"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    runs = len(data_quality.ARMS) * len(data_quality.SEEDS)
    assert len(lines) == 3 * runs + 1
    sweep_root = paths.join(root, "data_quality")
    assert f"--workdir={sweep_root}/raw-seed=0" in lines[0]
    assert f"--tasks=ppl:{sweep_root}/data/{ablation.CLEAN_FILE}" in lines[1]
    assert f"--output={sweep_root}/raw-seed=0/{ablation.EVAL_TASKS}" in lines[2]
    assert lines[-1].endswith(f"-m launch.report {sweep_root}")
    assert list(paths.path(bucket).iterdir()) == []
