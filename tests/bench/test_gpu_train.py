"""bench.gpu_train's dry run, on this CPU (no GPU is lent to the suite): the script's step
compiles and reports what a GPU run would measure (narrowed here: a full-width compile takes
minutes on a shared 2-core host)."""

from bench import gpu_train
from phi3_jax import metrics


def test_dry_run_compiles_the_step(capsys):
    config = gpu_train.gpu_config(batch=1, attention="cudnn", layers=1, remat="dots")
    assert config.model.hidden_size == 3072 and config.model.dtype == "bfloat16"
    config.model.update(hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=4)
    plan = gpu_train.dry_run(config, steps=10)
    assert plan["tokens_per_step"] == gpu_train.SEQ_LEN
    per_token = metrics.flops_per_token(config)["model"]
    assert plan["model_flops_per_step"] == per_token * gpu_train.SEQ_LEN
    assert plan["temporary_gib"] > 0
    assert "times 10 steps of 4096 tokens" in capsys.readouterr().out


def test_the_peaks_of_the_gpus_lent():
    class Device:
        device_kind = "NVIDIA H200"

    assert gpu_train.device_peak(Device()) == 989e12
    Device.device_kind = "NVIDIA H100 80GB HBM3"
    assert gpu_train.device_peak(Device()) == 989e12
    Device.device_kind = "cpu"
    assert gpu_train.device_peak(Device()) is None
