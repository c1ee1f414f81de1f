"""Every config, preset and sweep run parses and validates; the pretraining recipes hold the
report's token counts and context lengths; each preset's mesh covers its hardware and splits its
batch evenly; the sweep launcher's dry run prints one command per run, each its own workdir."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from configs import phi3_medium, phi3_mini, phi3_mini_128k, phi3_small
from configs.sweeps import lr, scale
from launch import sweep
from phi3_jax import model, tpu
from phi3_jax.config import MESH_AXES, ConfigError, default_config

FULL_SIZE = {
    # module: (tokens, seq_len, parameters) from the report (PHI3.md §5.1) and the README.
    phi3_mini: (3.3e12, 4096, 3_821_079_552),
    phi3_mini_128k: (3.3e12, 4096, 3_821_079_552),
    phi3_small: (4.8e12, 8192, 7_392_272_384),
    phi3_medium: (4.8e12, 4096, 13_960_238_080),
}
PRESETS = [
    (module, arg)
    for module in FULL_SIZE
    for arg in (None, *sorted(getattr(module, "PRESETS", phi3_mini.PRESETS)))
]


@pytest.mark.parametrize("module, arg", PRESETS, ids=lambda x: getattr(x, "__name__", x))
def test_every_config_and_preset_validates(module, arg):
    config = module.get_config(arg)
    tokens, seq_len, _ = FULL_SIZE[module]
    batch_tokens = config.train.global_batch_size * config.train.seq_len
    assert config.train.seq_len == seq_len
    assert batch_tokens == 4 * 1024 * 1024  # Llama 2's 4M-token batch
    # Enough steps for the report's tokens, and not a whole batch more.
    assert 0 <= config.train.steps * batch_tokens - tokens < batch_tokens
    assert (config.optim.lr, config.optim.warmup_steps, config.optim.min_lr_ratio) == (
        3e-4,
        2000,
        0.1,
    )
    assert config.data.phase2_start_step == config.train.steps * 9 // 10


def _target_devices(arg: str) -> int:
    kind, target = arg.split("=")
    if kind == "tpu":
        return tpu.parse_topology(target).chips
    assert target.startswith("h100x")
    return int(target.removeprefix("h100x"))


@pytest.mark.parametrize(
    "module, arg", [(m, a) for m, a in PRESETS if a], ids=lambda x: getattr(x, "__name__", x)
)
def test_presets_cover_their_hardware_and_split_the_batch(module, arg):
    config = module.get_config(arg)
    sizes = [config.mesh[axis] for axis in MESH_AXES]
    assert math.prod(sizes) == _target_devices(arg)
    data_parallel = config.mesh.data * config.mesh.fsdp
    rows = config.train.global_batch_size // config.train.microbatches
    assert rows % data_parallel == 0
    assert config.model.remat == "full"


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError) as error:
        phi3_mini.get_config("tpu=v9-8")
    assert str(error.value) == (
        "preset='tpu=v9-8': unknown for mini; expected one of gpu=h100x64, tpu=v4-128, "
        "tpu=v5e-256, tpu=v5p-128"
    )
    with pytest.raises(ConfigError, match="expected nothing, 'tiny' or one of gpu=h100x64"):
        phi3_small.get_config("tpu=v9-8")


def test_small_tiny_keeps_its_test_settings():
    # The test-size twin gets no pretraining recipe: the schema's defaults stay.
    assert phi3_small.get_config("tiny").train.to_dict() == default_config().train.to_dict()


@pytest.mark.parametrize("sweep_module", [scale, lr], ids=["scale", "lr"])
def test_every_sweep_run_validates(sweep_module):
    runs = sweep_module.runs()
    names = [sweep.run_name(run) for run in runs]
    assert len(set(names)) == len(runs)
    for run in runs:
        config = sweep.load_config(run["config"], run["overrides"])
        for key, value in run["overrides"].items():
            section, leaf = key.split(".")
            assert config[section][leaf] == value


def test_scale_sweep_climbs_the_sizes_with_their_batch_and_lr():
    runs = scale.runs()
    configs = [sweep.load_config(run["config"], run["overrides"]) for run in runs]
    assert [c.model.name for c in configs] == ["tiny", "mini", "small", "medium"]
    assert [c.optim.lr for c in configs] == [6e-4, 1.6e-4, 1.2e-4, 1e-4]
    batch_tokens = [c.train.global_batch_size * c.train.seq_len for c in configs]
    assert batch_tokens == [2**19, 2**20, 2**21, 2**21]
    for config, tokens in zip(configs, batch_tokens, strict=True):
        # 20 tokens per parameter (Chinchilla), the ladder's counts being the model's own.
        budget = 20 * model.param_count(config)
        assert 0 <= config.train.steps * tokens - budget < tokens


def test_lr_sweep_spans_two_decades():
    assert [run["overrides"]["optim.lr"] for run in lr.runs()] == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]


def test_an_unknown_override_is_named():
    with pytest.raises(ConfigError, match=r"optim.learning_rate=0.1: unknown key"):
        sweep.load_config("configs/phi3_tiny.py", {"optim.learning_rate": 0.1})


def test_sweep_dry_run_prints_one_launch_per_run():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.sweep",
            "configs/sweeps/lr.py",
            "--launcher=slurm",
            "--workdir_root=gs://bucket/sweeps",
            "--dry_run",
            "--",
            "--nodes=1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0] == (
        "sbatch --nodes=1 launch/slurm.sbatch --config=configs/phi3_tiny.py "
        "--workdir=gs://bucket/sweeps/lr/phi3_tiny-lr=0.0001-steps=300-warmup_steps=30-"
        "phase2_start_step=270 --config.optim.lr=0.0001 --config.train.steps=300 "
        "--config.optim.warmup_steps=30 --config.data.phase2_start_step=270"
    )
    assert [line.split()[4].rsplit("/", 1)[1].split("-")[1] for line in lines] == [
        "lr=0.0001",
        "lr=0.0003",
        "lr=0.001",
        "lr=0.003",
        "lr=0.01",
    ]


@pytest.mark.slow
def test_sweep_runs_launch_locally_one_after_another(tmp_path):
    sweep_file = tmp_path / "two.py"
    sweep_file.write_text(
        "def runs():\n"
        "    return [dict(config='configs/phi3_tiny.py', overrides={\n"
        "        'train.steps': 2, 'optim.lr': lr, 'optim.warmup_steps': 1,\n"
        "        'data.phase2_start_step': 1, 'checkpoint.every_steps': 2,\n"
        "        'eval.every_steps': 100, 'data.num_workers': 0})\n"
        "        for lr in (1e-3, 3e-3)]\n"
    )
    root = tmp_path / "sweeps"
    result = subprocess.run(
        [sys.executable, "-m", "launch.sweep", str(sweep_file), "--launcher=local"]
        + [f"--workdir_root={root}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.name for p in (root / "two").iterdir())
    assert [name.split("-")[2] for name in runs] == ["lr=0.001", "lr=0.003"]
    for name in runs:
        assert (root / "two" / name / "checkpoints" / "2").is_dir()


def test_the_128k_extension_preset_splits_each_row_over_the_sequence_axis():
    config = phi3_mini_128k.get_config("extend,tpu=v5p-128")
    mesh = {axis: config.mesh[axis] for axis in MESH_AXES}
    assert math.prod(mesh.values()) == tpu.parse_topology("v5p-128").chips
    assert config.train.seq_len == config.model.max_position_embeddings == 131072
    assert config.train.global_batch_size * config.train.seq_len == 4 * 1024 * 1024
    rows = config.train.global_batch_size // config.train.microbatches
    assert rows % (mesh["data"] * mesh["fsdp"]) == 0 and mesh["sequence"] > 1
    assert config.model.attention == "chunked" and config.train.loss_chunk
